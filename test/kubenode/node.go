// Package kubenode starts a real Kubernetes for the tests and benchmarks:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and a
// container runtime and kubelet per node, all built from the Go module
// proxy (hack/k8s, hack/containerd, hack/crio), with the RuntimeClass
// handler "stasis" pointing at stasis-runc. Start runs a single node on
// the host; StartCluster runs several, each in network and mount
// namespaces of its own. Everything they start lives under their own
// directories and is removed by Stop, so a host running Podman or other
// tests is left as it was.
package kubenode

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Options say where the pieces are.
type Options struct {
	// K8sBin holds kube-apiserver, kubelet, ... (hack/k8s/build.sh);
	// by default $STASIS_K8S_BIN, else where the build script caches them.
	K8sBin        string
	ContainerdBin string // containerd, containerd-shim-runc-v2, ctr (hack/containerd/build.sh)
	StasisRunc    string // the stasis-runc binary for the "stasis" handler
	// StasisRoot and StasisRunRoot are the node's stasis store, which
	// stasis-runc restores from.
	StasisRoot, StasisRunRoot string
	// StasisClusterKey is the public key stasis-runc verifies checkpoints
	// with (the agents' signing key's); StasisTrustedKeys more keys whose
	// checkpoints it restores.
	StasisClusterKey  string
	StasisTrustedKeys []string
	// StasisAgentSocket is the agent stasis-runc asks about grants
	// (default: its own, under StasisRunRoot).
	StasisAgentSocket string
	Log               io.Writer // progress lines; nil for none
	// ControlPlaneOnly starts etcd and kube-apiserver alone: the
	// envtest-style setup controller tests need, without a node.
	ControlPlaneOnly bool
}

// Node is a running single-node cluster.
type Node struct {
	Name, IP string
	Dir, Run string // data and runtime state (sockets)
	// ControlPlane holds the system:masters Kubeconfig, Config and
	// Client, and the cluster CA and admin pair, which the kubelet
	// accepts too.
	*ControlPlane
	// KubeletURL is the kubelet's API, for its checkpoint endpoint.
	KubeletURL string

	opts Options
	w    *worker
}

// The single node's names, fixed so that Stop finds them: its kubelet's
// cgroupRoot, under which every pod process is, its CNI bridge in the
// host's network namespace and its pod subnet.
const (
	cgroupRoot = "stasis-kube"
	bridge     = "stasiskube0"
	podCIDR    = "10.244.77.0/24"
)

// Start brings the cluster up and returns once the node is Ready and the
// default ServiceAccount exists. On failure it stops what it started.
func Start(ctx context.Context, o Options) (_ *Node, err error) {
	o.K8sBin = defaultK8sBin(o.K8sBin)
	n := &Node{Name: "stasis-node", opts: o}
	if n.IP, err = hostIP(); err != nil {
		return nil, err
	}
	if n.Dir, err = os.MkdirTemp("/var/tmp", "stasis-kube-"); err != nil {
		return nil, err
	}
	// Unix socket paths must stay short: state goes under /run.
	if n.Run, err = os.MkdirTemp("/run", "stasis-kube-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.Stop()
		}
	}()
	if n.ControlPlane, err = newControlPlane(n.Dir, o.K8sBin, n.IP); err != nil {
		return nil, err
	}
	kubeletPort, err := freePort()
	if err != nil {
		return nil, err
	}
	// The node shares the control plane's directories and log directory:
	// test/kube reads them (logs/containerd.log, containerd's state).
	n.w = &worker{name: n.Name, ip: n.IP, dir: n.Dir, run: n.Run, runtime: RuntimeContainerd, opts: o,
		apiServer: n.apiURL("127.0.0.1"), cgroupRoot: cgroupRoot, bridge: bridge, podCIDR: podCIDR,
		kubeletPort: kubeletPort, command: hostCommand, procs: procs{logDir: n.path("logs")}}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"certificates", n.writePKI},
		{"etcd and kube-apiserver", n.startAPIServer},
		{"controller-manager and scheduler", n.startControllers},
		{"containerd", n.w.startContainerd},
		{"images", n.importImages},
		{"kubelet", n.startKubelet},
		{"node Ready", n.waitReady},
	}
	if o.ControlPlaneOnly {
		steps = steps[:2]
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("kubenode: %s: %w", s.name, err)
		}
		logf(o.Log, "%s: %.1fs", s.name, time.Since(t).Seconds())
	}
	return n, nil
}

// defaultK8sBin is where the Kubernetes binaries are when the options do
// not say: $STASIS_K8S_BIN, else where hack/k8s/build.sh caches them.
func defaultK8sBin(dir string) string {
	if dir != "" {
		return dir
	}
	if dir = os.Getenv("STASIS_K8S_BIN"); dir != "" {
		return dir
	}
	return "/var/cache/stasis/k8s/bin"
}

func hostIP() (string, error) {
	// The kubelet needs an address of this host that is not loopback; the
	// source address of the default route is one.
	c, err := net.Dial("udp", "192.0.2.1:9")
	if err != nil {
		return "", fmt.Errorf("kubenode: no route to find this host's address: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (n *Node) path(parts ...string) string {
	return filepath.Join(append([]string{n.Dir}, parts...)...)
}

// writePKI makes the cluster's certificates, the kubelet's among them, in
// one directory.
func (n *Node) writePKI(ctx context.Context) error {
	if err := n.ControlPlane.writePKI(ctx); err != nil {
		return err
	}
	n.w.pki, n.w.ca = n.pki, n.CA
	return n.w.issueCerts(ctx)
}

// LogTail is the end of a component's log, for a failure message.
func (n *Node) LogTail(name string, lines int) string {
	return n.ControlPlane.LogTail(name, lines)
}

// ContainerdPid is containerd's process: one in the host's mount
// namespace that this host lets a pod enter (its PID 1 it does not).
func (n *Node) ContainerdPid() int { return n.w.procs.pid("containerd") }

// Socket is containerd's address.
func (n *Node) Socket() string { return n.w.socket() }

// RuncRoot is where the shims keep runc's state of the pods' containers.
func (n *Node) RuncRoot() string { return n.w.runcRoot() }

// Ctr runs containerd's ctr in the Kubernetes namespace.
func (n *Node) Ctr(args ...string) (string, error) { return n.w.ctr(args...) }

func (n *Node) importImages(context.Context) error {
	images, err := nodeImages(n.Dir)
	if err != nil {
		return err
	}
	return n.w.importImages(images)
}

// ImportImage puts an image archive (docker or OCI) into the node's
// containerd, where pods with imagePullPolicy Never find it.
func (n *Node) ImportImage(tarball string) error { return n.w.importImage(tarball) }

func (n *Node) startKubelet(ctx context.Context) error {
	n.KubeletURL = n.w.kubeletURL()
	return n.w.startKubelet(ctx)
}

func (n *Node) waitReady(ctx context.Context) error {
	if err := n.w.waitReady(ctx, n.Client); err != nil {
		return err
	}
	return n.finish(ctx)
}

// writeRuntimeConfig writes stasis-runc's config (pkg/runtimeclass.Config) for
// the node's store and keys.
func writeRuntimeConfig(path string, o Options) error {
	b, err := json.Marshal(map[string]any{"runtime": "/usr/sbin/runc", "root": o.StasisRoot, "runRoot": o.StasisRunRoot,
		"tlsVerify": false, "clusterKey": o.StasisClusterKey, "trustedKeys": o.StasisTrustedKeys, "agentSocket": o.StasisAgentSocket,
		"trustedKeyDir": filepath.Join(filepath.Dir(path), "trusted-keys")})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
