package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/agent"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
	"github.com/stasis-dev/stasis/pkg/runtime"
)

func agentCmd(g *globals) *cobra.Command {
	var listen, cert, key, clientCA, tokens, auditLog, kubeconfig string
	var criRuncRoot, mountinfo, hostRoot string
	var inCluster bool
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

On a Kubernetes node (the DaemonSet in config/agent), --cri-runc-root adds
POST /v1/pods/{namespace}/{pod}/checkpoint, which the stasis controller
calls: the pod's containers (runc containers of containerd or CRI-O) are
frozen together, dumped, and stored as checkpoint images, pushed to a
registry when asked.`,
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
			if kubeconfig != "" || inCluster {
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
			if criRuncRoot != "" {
				runc, err := exec.LookPath(g.runtime)
				if err != nil {
					return err
				}
				cfg.Pods = &podcheckpoint.Checkpointer{Engine: e, Mountinfo: mountinfo, HostRoot: hostRoot,
					Runtime: &runtime.Runtime{Binary: runc, Root: criRuncRoot}}
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
	f.BoolVar(&inCluster, "in-cluster", false, "as --kubeconfig, with the credentials of the pod the agent runs in")
	f.StringVar(&criRuncRoot, "cri-runc-root", "", "on a Kubernetes node: the runc --root of the CRI runtime's containers (containerd: /run/containerd/runc/k8s.io; CRI-O: its runtime_root); enables pod checkpoints")
	f.StringVar(&hostRoot, "host-root", "/", "where the host's root filesystem is seen (in a container: the mount of the host's /)")
	f.StringVar(&mountinfo, "mountinfo", "/proc/1/mountinfo", "where the containers' rootfs mounts are listed (the host's)")
	return cmd
}
