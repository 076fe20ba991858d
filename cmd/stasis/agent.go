package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stasis-dev/stasis/pkg/agent"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
)

func agentCmd(g *globals) *cobra.Command {
	var listen, cert, key, clientCA, tokens, auditLog, kubeconfig string
	var kubelet podKubelet
	var cfg agent.Config
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Serve checkpoint and restore on this node over an HTTPS API",
		Long: `The agent is the node's one process that checkpoints and restores, for
callers who prove who they are: a client certificate signed by --client-ca
(CN is the user, organisation "stasis:admin" or "stasis:viewer" the role), or
a bearer token from --tokens ({"<token>": {"user": "...", "role": "admin"}})
or, with --kubeconfig, one the API server knows, whose role RBAC decides
(config/rbac: create on stasis.dev checkpoints is admin, get is viewer).
Admins checkpoint, restore, delete and download; viewers list and read
metadata. Every request goes to the audit log (JSON lines); /metrics serves
Prometheus metrics. SIGTERM stops it gracefully.

API: GET /v1/containers, GET /v1/checkpoints[/{id}[/archive]],
DELETE /v1/checkpoints/{id}, POST /v1/containers/{name}/checkpoint,
POST /v1/restore, PUT /v1/restore?name= (archive in the body),
GET|DELETE /v1/operations/{id} (?async=true on an operation), and the
kubelet's POST /checkpoint/{namespace}/{pod}/{container}?timeout=N.

On a Kubernetes node (the DaemonSet in config/agent), --kubelet-url adds
POST /v1/pods/{namespace}/{pod}/checkpoint, which the stasis controller
calls: the pod's containers are frozen together, dumped through the
kubelet's checkpoint API (so containerd and CRI-O alike), and stored as
checkpoint images, pushed to a registry when asked.`,
		Example: `  stasis agent --tls-cert agent.pem --tls-key agent-key.pem --client-ca ca.pem --tokens tokens.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cert == "" || key == "" {
				return fmt.Errorf("the agent serves HTTPS only: give --tls-cert and --tls-key")
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			tlsConfig, err := agent.TLSConfig(cert, key, clientCA)
			if err != nil {
				return err
			}
			var auth agent.Authenticator
			if kubeconfig != "" {
				if tokens != "" {
					return fmt.Errorf("--kubeconfig and --tokens exclude each other: in a cluster the API server knows the tokens")
				}
				auth, err = agent.NewKubeReview(kubeconfig)
			} else {
				auth, err = agent.NewCertOrToken(tokens)
			}
			if err != nil {
				return err
			}
			if auditLog == "" {
				auditLog = filepath.Join(g.root, "audit.log")
			}
			audit, err := os.OpenFile(auditLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("audit log: %w", err)
			}
			defer audit.Close()
			cfg.Engine, cfg.Auth, cfg.Audit = e, auth, audit
			cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
			// A previous agent killed in the middle of an operation may
			// have left a container frozen and files half written.
			did, err := e.Recover(cmd.Context())
			for _, d := range did {
				cfg.Log.Info("recovered", "action", d)
			}
			if err != nil {
				return fmt.Errorf("recover: %w", err)
			}
			if kubelet.url != "" {
				if cfg.Pods, err = kubelet.checkpointer(e, kubeconfig); err != nil {
					return err
				}
			}
			srv, err := agent.New(cfg)
			if err != nil {
				return err
			}
			return srv.Serve(cmd.Context(), listen, tlsConfig, grace)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7443", "address to serve HTTPS on")
	f.StringVar(&cert, "tls-cert", "", "the agent's certificate (PEM)")
	f.StringVar(&key, "tls-key", "", "the agent's private key (PEM)")
	f.StringVar(&clientCA, "client-ca", "", "CA whose client certificates are accepted (PEM)")
	f.StringVar(&tokens, "tokens", "", "bearer tokens file (JSON)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "in a cluster: ask this API server about bearer tokens and roles (TokenReview, SubjectAccessReview; see config/rbac)")
	f.StringVar(&auditLog, "audit-log", "", "audit log file (default: ROOT/audit.log)")
	f.IntVar(&cfg.Parallel, "parallel", 8, "operations run at once; more wait")
	f.Int64Var(&cfg.MaxUpload, "max-upload", 64<<30, "largest archive accepted by PUT /v1/restore, in bytes")
	f.DurationVar(&cfg.OpTimeout, "timeout", 30*time.Minute, "longest an operation may take unless ?timeout= says otherwise")
	f.DurationVar(&grace, "grace", time.Minute, "how long SIGTERM waits for running operations")
	f.StringVar(&kubelet.url, "kubelet-url", "", "the node's kubelet API, e.g. https://127.0.0.1:10250: enables pod checkpoints (credentials from --kubeconfig, or in-cluster)")
	f.StringVar(&kubelet.ca, "kubelet-ca", "", "CA of the kubelet's serving certificate (default: the API server's)")
	f.BoolVar(&kubelet.insecure, "kubelet-insecure-tls", false, "do not verify the kubelet's serving certificate (self-signed kubelet certificates)")
	f.StringVar(&kubelet.runcRoot, "cri-runc-root", "/run/containerd/runc/k8s.io", "runc state directory of the CRI runtime's containers (CRI-O: its runtime_root)")
	return cmd
}

// podKubelet is how the agent reaches the node's kubelet for pod
// checkpoints.
type podKubelet struct {
	url, ca, runcRoot string
	insecure          bool
}

func (k podKubelet) checkpointer(e *engine.Engine, kubeconfig string) (*podcheckpoint.Checkpointer, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubelet credentials: %w", err)
	}
	if k.ca != "" {
		cfg.TLSClientConfig.CAFile, cfg.TLSClientConfig.CAData = k.ca, nil
	}
	if k.insecure {
		cfg.TLSClientConfig.Insecure, cfg.TLSClientConfig.CAFile, cfg.TLSClientConfig.CAData = true, "", nil
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubelet client: %w", err)
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return nil, err
	}
	return &podcheckpoint.Checkpointer{Engine: e, Kubelet: podcheckpoint.Kubelet{URL: k.url, Client: hc},
		Runc: runc, RuncRoot: k.runcRoot}, nil
}
