// Command stasis-controller runs the reconcilers of the stasis.dev API
// (internal/controller): Checkpoints are taken by the stasis agent on the
// pod's node, Restores become pods the RuntimeClass "stasis" restores.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/internal/controller"
)

func main() {
	var metricsAddr, probeAddr string
	agents := &controller.AgentClients{}
	flag.IntVar(&agents.Port, "agent-port", 7443, "port the stasis agents listen on, on each node's InternalIP")
	flag.StringVar(&agents.CA, "agent-ca", "", "CA of the agents' serving certificates (PEM)")
	flag.StringVar(&agents.TokenFile, "agent-token-file", "/var/run/secrets/kubernetes.io/serviceaccount/token",
		"bearer token shown to the agents (the controller's ServiceAccount token)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "address of the metrics endpoint; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: stasis-controller [flags]

Reconciles stasis.dev/v1alpha1 Checkpoints (the pod's node agent freezes,
dumps and stores its containers) and Restores (a new pod, run by the
RuntimeClass "stasis", restored from a Checkpoint). Deployed by
config/default; see docs/kubernetes.md.

Flags:
`)
		flag.PrintDefaults()
	}
	flag.Parse()
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)))
	if err := run(metricsAddr, probeAddr, agents); err != nil {
		fmt.Fprintln(os.Stderr, "stasis-controller:", err)
		os.Exit(1)
	}
}

func run(metricsAddr, probeAddr string, agents *controller.AgentClients) error {
	// --kubeconfig (registered by controller-runtime), $KUBECONFIG, or
	// in-cluster credentials.
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := stasisv1.AddToScheme(scheme); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme,
		Metrics: metricsserver.Options{BindAddress: metricsAddr}, HealthProbeBindAddress: probeAddr})
	if err != nil {
		return err
	}
	if err := (&controller.CheckpointReconciler{Client: mgr.GetClient(),
		Events: mgr.GetEventRecorder("stasis-controller"), Agents: agents}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&controller.RestoreReconciler{Client: mgr.GetClient(),
		Events: mgr.GetEventRecorder("stasis-controller")}).SetupWithManager(mgr); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}
