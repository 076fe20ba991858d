package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/stasis-dev/stasis/pkg/agent"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/wire"
)

func agentCmd(g *globals) *cobra.Command {
	var listen, cert, key, clientCA, tokens, auditLog, kubeconfig string
	var criRuncRoot, mountinfo, hostRoot string
	var inCluster bool
	var tokenAudience, nodeName, nodeSocket string
	var cfg agent.Config
	var grace time.Duration
	var signingKey, clusterName string
	var peerCA, serviceAccount string
	var peerPort int
	var trustedKeys []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Serve checkpoint and restore on this node over an HTTPS API",
		Long: `The agent is the node's one process that checkpoints and restores, for
callers who prove who they are: a client certificate signed by --client-ca
(CN is the user, organisation "stasis:admin" or "stasis:viewer" the role), or
a bearer token from --tokens ({"<token>": {"user": "...", "role": "admin"}})
or, with --kubeconfig (or --in-cluster), one the API server knows for the
audience --token-audience (by default this node's, stasis-agent:<node>: the
API server's own tokens are refused, and a token for one agent opens no
other agent and not the API server), whose role RBAC decides (config/rbac: create on stasis.dev
checkpoints is admin, get is viewer); reviews are remembered for 30s.
Admins checkpoint, restore, delete and download; viewers list and read
metadata. Every request goes to the audit log (JSON lines); /metrics serves
Prometheus metrics. SIGTERM stops it gracefully.

API: GET /v1/containers, GET /v1/checkpoints[/{id}[/archive]],
DELETE /v1/checkpoints/{id}, POST /v1/containers/{name}/checkpoint,
POST /v1/restore, PUT /v1/restore?name= (archive in the body),
GET|DELETE /v1/operations/{id} (?async=true on an operation; only its
starter and admins see it, others get 404; kept an hour after it ends),
and the kubelet's POST /checkpoint/{namespace}/{pod}/{container}?timeout=N.

On a Kubernetes node (the DaemonSet in config/agent), --cri-runc-root with
--kubeconfig or --in-cluster adds POST /v1/pods/{namespace}/{pod}/checkpoint,
which the stasis controller calls with the checkpoint's name, uid, optional
container names, repository and insecure. The agent reads the pod from the
API server: it must run on this node (--node-name) and not be annotated
stasis.dev/checkpoint=never (403; stasis.dev/migrate=never refuses a
repository); the named containers (default: all but init containers) must
be running, and their runtime IDs are the API server's, never the caller's.
They are frozen together, dumped, and stored as checkpoint images, pushed to
a registry when asked. The agent's identity needs get on pods, and on the
Restores, WarmStarts and Checkpoints that grants name (config/rbac).

--node-socket (in a cluster; default RUNROOT/agent.sock, mode 0600) serves root on this
node only (the kernel's SO_PEERCRED says who connects; others get 403): the
RuntimeClass's runtime, stasis-runc, asks there which checkpoint a pod's
grant lets it restore. It serves none of the HTTPS API.`,
		Example: `  stasis agent --tls-cert agent.pem --tls-key agent-key.pem --client-ca ca.pem --tokens tokens.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cert == "" || key == "" {
				return fmt.Errorf("the agent serves HTTPS only: give --tls-cert and --tls-key")
			}
			signer, trust, err := signingConfig(signingKey, trustedKeys)
			if err != nil {
				return err
			}
			g.trust = trust
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
				if nodeName == "" {
					return fmt.Errorf("--node-name is required with --kubeconfig or --in-cluster: pods are checked to run on this node")
				}
				rc, err := agent.KubeConfig(kubeconfig)
				if err != nil {
					return err
				}
				kube, err := kubernetes.NewForConfig(rc)
				if err != nil {
					return fmt.Errorf("kubernetes client: %w", err)
				}
				if tokenAudience == "" {
					tokenAudience = wire.Audience(nodeName)
				}
				if auth, err = agent.NewKubeReview(kube, tokenAudience); err != nil {
					return err
				}
				if cfg.Grants, err = agent.NewGrants(rc, nodeName); err != nil {
					return err
				}
				cfg.Grants.Images = e.Images
				cfg.Kube, cfg.NodeName = kube, nodeName
				if peerCA == "" && inCluster {
					peerCA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
				}
				if peerCA != "" {
					peers, err := peerConfig(kube, e, listen, peerCA, serviceAccount, peerPort)
					if err != nil {
						return err
					}
					cfg.Grants.Peers = peers
				}
			} else if auth, err = agent.NewCertOrToken(tokens); err != nil {
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
			cfg.NodeSocket = nodeSocket
			if cfg.NodeSocket == "" && cfg.Grants != nil {
				// Only grants are asked there, and only in a cluster.
				cfg.NodeSocket = wire.NodeSocket(g.runRoot)
			}
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
				bin, err := exec.LookPath(g.runtime)
				if err != nil {
					return err
				}
				cfg.Pods = &podcheckpoint.Checkpointer{Engine: e, Mountinfo: mountinfo, HostRoot: hostRoot,
					Runtime: &runc.Runtime{Binary: bin, Root: criRuncRoot},
					Signer:  signer, Cluster: clusterName, Node: nodeName}
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
	f.StringVar(&kubeconfig, "kubeconfig", "", "in a cluster: ask this API server about bearer tokens and roles (TokenReview, SubjectAccessReview; see config/rbac), pods and grants")
	f.StringVar(&auditLog, "audit-log", "", "audit log file (default: ROOT/audit.log)")
	f.IntVar(&cfg.Parallel, "parallel", 8, "operations run at once; more wait")
	f.Int64Var(&cfg.MaxUpload, "max-upload", 64<<30, "largest archive accepted by PUT /v1/restore, in bytes")
	f.DurationVar(&cfg.OpTimeout, "timeout", 30*time.Minute, "longest an operation may take unless ?timeout= says otherwise")
	f.DurationVar(&grace, "grace", time.Minute, "how long SIGTERM waits for running operations")
	f.BoolVar(&inCluster, "in-cluster", false, "as --kubeconfig, with the credentials of the pod the agent runs in")
	f.StringVar(&tokenAudience, "token-audience", "", "with --kubeconfig: the audience bearer tokens must be issued for (default stasis-agent:NODE-NAME, what the controller asks for)")
	f.StringVar(&nodeName, "node-name", defaultNodeName(), "with --kubeconfig: this node's name in the cluster ($NODE_NAME, else the hostname)")
	f.StringVar(&nodeSocket, "node-socket", "", "unix socket for root on this node (stasis-runc) (default with --kubeconfig or --in-cluster: RUNROOT/agent.sock)")
	f.StringVar(&criRuncRoot, "cri-runc-root", "", "on a Kubernetes node: the runc --root of the CRI runtime's containers (containerd: /run/containerd/runc/k8s.io; CRI-O: its runtime_root); enables pod checkpoints")
	f.StringVar(&hostRoot, "host-root", "/", "where the host's root filesystem is seen (in a container: the mount of the host's /)")
	f.StringVar(&mountinfo, "mountinfo", "/proc/1/mountinfo", "where the containers' rootfs mounts are listed (the host's)")
	f.StringVar(&signingKey, "signing-key", "", "the cluster's checkpoint key (PEM): pod checkpoints are signed with it, and only checkpoint images signed by it or a --trusted-key are restored")
	f.StringVar(&clusterName, "cluster-name", "", "the cluster's name, claimed in the signatures of its checkpoints")
	f.StringVar(&peerCA, "peer-ca", "", "in a cluster: CA of the other nodes' agents' certificates, the kubelets' serving CA (PEM; default with --in-cluster: the ServiceAccount's ca.crt); enables fetching checkpoints kept on other nodes")
	f.IntVar(&peerPort, "peer-port", 0, "port the other nodes' agents listen on (default: that of --listen)")
	f.StringVar(&serviceAccount, "service-account", "stasis-system/stasis-agent", "NAMESPACE/NAME of the agent's ServiceAccount, whose tokens (one per other node's agent) it asks the API server for")
	f.StringArrayVar(&trustedKeys, "trusted-key", nil, "with --signing-key: a public key (PEM) whose signed checkpoint images are restored too (repeatable; an admin's, for checkpoints made elsewhere)")
	return cmd
}

// peerConfig is how this agent fetches checkpoints from other nodes'
// agents: at their InternalIP and peerPort (default: the port this agent
// listens on, as a DaemonSet's agents all do), verified with peerCA, with
// tokens of serviceAccount.
func peerConfig(kube kubernetes.Interface, e *engine.Engine, listen, peerCA, serviceAccount string, peerPort int) (*agent.Peers, error) {
	ns, name, ok := strings.Cut(serviceAccount, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--service-account %q: want NAMESPACE/NAME", serviceAccount)
	}
	if peerPort == 0 {
		_, port, err := net.SplitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", listen, err)
		}
		if peerPort, err = strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("--listen %q: %w", listen, err)
		}
	}
	return &agent.Peers{Engine: e, Kube: kube, Nodes: wire.Nodes{Port: peerPort, CA: peerCA,
		Tokens: &wire.ServiceAccountTokens{Client: kube.CoreV1(), Namespace: ns, Name: name}}}, nil
}

// defaultNodeName is the DaemonSet's NODE_NAME (from spec.nodeName), else
// the hostname, which is the node's name unless the kubelet was told
// otherwise.
func defaultNodeName() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

// signingConfig loads the cluster's checkpoint key, which signs this
// node's checkpoints, and the trust restores need: its public half and
// the trusted keys. Without a signing key there is neither.
func signingConfig(signingKey string, trustedKeys []string) (signature.Signer, *provenance.Trust, error) {
	if signingKey == "" {
		if len(trustedKeys) > 0 {
			return nil, nil, fmt.Errorf("--trusted-key needs --signing-key: the node's own checkpoints must verify too")
		}
		return nil, nil, nil
	}
	signer, err := provenance.LoadSigner(signingKey)
	if err != nil {
		return nil, nil, err
	}
	trust, err := provenance.LoadTrust(signingKey, trustedKeys)
	if err != nil {
		return nil, nil, err
	}
	return signer, trust, nil
}
