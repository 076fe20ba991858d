// Command stasis-controller runs the reconcilers of the stasis.dev API
// (internal/controller): Checkpoints are taken by the stasis agent on the
// pod's node, Restores become pods the RuntimeClass "stasis" restores.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/internal/controller"
	"github.com/stasis-dev/stasis/pkg/wire"
)

func main() {
	var metricsAddr, probeAddr, serviceAccount string
	var retryFor time.Duration
	agents := &controller.AgentClients{}
	flag.IntVar(&agents.Port, "agent-port", 7443, "port the stasis agents listen on, on each node's InternalIP")
	flag.StringVar(&agents.CA, "agent-ca", "", "CA of the agents' serving certificates, the kubelets' (PEM; required)")
	flag.StringVar(&serviceAccount, "service-account", "stasis-system/stasis-controller",
		"NAMESPACE/NAME of the controller's ServiceAccount, whose tokens (one per node's agent) it asks the API server for")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "address of the metrics endpoint; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.DurationVar(&retryFor, "restore-retry-for", 3*time.Minute,
		"how long a restore that failed because an agent or a node could not be reached waits for the kubelet's next attempts before the Restore fails")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: stasis-controller [flags]

Reconciles stasis.dev/v1alpha1 Checkpoints (the pod's node agent freezes,
dumps and stores its containers), Restores (a new pod, run by the
RuntimeClass "stasis", restored from a Checkpoint) and Migrations (a pod
checkpointed, deleted and restored under its name on another node). Deployed by
config/default; see docs/kubernetes.md.

Flags:
`)
		flag.PrintDefaults()
	}
	flag.Parse()
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)))
	if err := run(metricsAddr, probeAddr, serviceAccount, retryFor, agents); err != nil {
		fmt.Fprintln(os.Stderr, "stasis-controller:", err)
		os.Exit(1)
	}
}

func run(metricsAddr, probeAddr, serviceAccount string, retryFor time.Duration, agents *controller.AgentClients) error {
	// --kubeconfig (registered by controller-runtime), $KUBECONFIG, or
	// in-cluster credentials.
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	ns, name, ok := strings.Cut(serviceAccount, "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("--service-account %q: want NAMESPACE/NAME", serviceAccount)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	agents.Tokens = &wire.ServiceAccountTokens{Client: cs.CoreV1(), Namespace: ns, Name: name}
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
		Events: mgr.GetEventRecorder("stasis-controller"), RetryFor: retryFor}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&controller.MigrationReconciler{Client: mgr.GetClient(),
		Events: mgr.GetEventRecorder("stasis-controller"), Agents: agents,
		Metrics: controller.NewMigrationMetrics(ctrlmetrics.Registry)}).SetupWithManager(mgr); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}
