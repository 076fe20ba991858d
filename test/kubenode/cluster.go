package kubenode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// ClusterOptions say where the pieces are and which nodes to run.
type ClusterOptions struct {
	// K8sBin holds kube-apiserver, kubelet, ... (hack/k8s/build.sh); by
	// default $STASIS_K8S_BIN, else where the build script caches them.
	K8sBin string
	// ContainerdBin holds containerd, containerd-shim-runc-v2 and ctr
	// (hack/containerd/build.sh); by default $STASIS_CONTAINERD_BIN, else
	// where the build script caches them.
	ContainerdBin string
	// CRIOBin holds crio, pinns and crictl (hack/crio/build.sh), for the
	// nodes whose Runtime is RuntimeCRIO; by default $STASIS_CRIO_BIN,
	// else where the build script caches them.
	CRIOBin    string
	StasisRunc string // the stasis-runc binary for the "stasis" handler
	// StasisClusterKey is the public key stasis-runc verifies checkpoints
	// with; StasisTrustedKeys more keys whose checkpoints it restores.
	StasisClusterKey  string
	StasisTrustedKeys []string
	Nodes             []NodeSpec
	// SharedDir is a host directory every node sees at the same path: a
	// stand-in for a network file system. By default one under the
	// cluster's directory, which Stop removes; one given is kept. Its
	// files are shared; a mount the host makes on it after StartCluster
	// reaches the nodes only if it is under a shared mount (a node's
	// mount namespace is a slave copy of the host's).
	SharedDir string
	Log       io.Writer // progress lines; nil for none
}

// NodeSpec is one node of a cluster.
type NodeSpec struct {
	Name    string // a DNS label, the Node's name
	Runtime string // RuntimeContainerd (the default) or RuntimeCRIO
	// StasisRoot and StasisRunRoot are the node's stasis store, which
	// its stasis-runc restores from; by default directories of its own.
	StasisRoot, StasisRunRoot string
	// StasisAgentSocket is the agent stasis-runc asks about grants
	// (default: its own, under StasisRunRoot). stasis-runc asks it for
	// every container of a pod under the RuntimeClass "stasis", so such
	// pods need the node's agent running (Member.Command starts it in
	// the node).
	StasisAgentSocket string
}

// Cluster is a control plane on the host and nodes, each in its own
// network and mount namespaces, with its own runtime and kubelet.
type Cluster struct {
	// ControlPlane holds the system:masters Kubeconfig, Config and
	// Client, and the cluster CA and admin pair, which the kubelets
	// accept too.
	*ControlPlane
	Dir, Run string // data and runtime state (sockets)
	Nodes    []*Member
	// SharedDir is at the same path on every node.
	SharedDir string
	// HostIP is the host's address on the nodes' network, where they
	// and their pods reach the API server (at APIPort).
	HostIP string

	opts       ClusterOptions
	bridge     *clusterBridge
	ownsShared bool
	started    time.Time
}

// Member is a node of a Cluster.
type Member struct {
	Name    string
	Runtime string // RuntimeContainerd or RuntimeCRIO
	// IP is the node's address in its network namespace, which the host
	// and the other nodes reach.
	IP string
	// PodCIDR is the subnet its pods' addresses are from; the host and the
	// other nodes route it to IP.
	PodCIDR  string
	Dir, Run string // the node's data and runtime state (sockets)
	// KubeletURL is the kubelet's API, for its checkpoint endpoint.
	KubeletURL string
	// StasisRoot and StasisRunRoot are the node's stasis store.
	StasisRoot, StasisRunRoot string

	w  *worker
	ns *namespaces
}

// StartCluster brings a cluster up and returns once every node is Ready
// and the default ServiceAccount exists. On failure it stops what it
// started.
func StartCluster(ctx context.Context, o ClusterOptions) (_ *Cluster, err error) {
	if err := o.defaults(); err != nil {
		return nil, fmt.Errorf("kubenode: %w", err)
	}
	c := &Cluster{opts: o, started: time.Now()}
	if c.Dir, err = os.MkdirTemp("/var/tmp", "stasis-cluster-"); err != nil {
		return nil, err
	}
	// Unix socket paths must stay short: state goes under /run.
	if c.Run, err = os.MkdirTemp("/run", "stasis-cluster-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := c.makeSharedDir(); err != nil {
		return nil, fmt.Errorf("kubenode: shared directory: %w", err)
	}
	if c.bridge, err = newClusterBridge(); err != nil {
		return nil, fmt.Errorf("kubenode: %w", err)
	}
	c.HostIP = c.bridge.hostIP
	if c.ControlPlane, err = newControlPlane(c.Dir, o.K8sBin, c.HostIP); err != nil {
		return nil, err
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"node namespaces", c.makeNodes},
		{"certificates", c.writePKI},
		{"etcd and kube-apiserver", c.startAPIServer},
		{"controller-manager and scheduler", c.startControllers},
		{"runtimes", c.eachNode((*Member).startRuntime)},
		{"images", c.importImages},
		{"kubelets", c.eachNode((*Member).startKubelet)},
		{"nodes Ready", c.waitReady},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("kubenode: %s: %w", s.name, err)
		}
		logf(o.Log, "%s: %.1fs", s.name, time.Since(t).Seconds())
	}
	logf(o.Log, "cluster of %d nodes up in %.1fs", len(c.Nodes), time.Since(c.started).Seconds())
	return c, nil
}

func (o *ClusterOptions) defaults() error {
	o.K8sBin = defaultK8sBin(o.K8sBin)
	o.ContainerdBin = envDefault(o.ContainerdBin, "STASIS_CONTAINERD_BIN", "/var/cache/stasis/containerd/bin")
	o.CRIOBin = envDefault(o.CRIOBin, "STASIS_CRIO_BIN", "/var/cache/stasis/crio/bin")
	if len(o.Nodes) == 0 {
		return errors.New("a cluster needs nodes")
	}
	seen := map[string]bool{}
	for i := range o.Nodes {
		s := &o.Nodes[i]
		if errs := validation.IsDNS1123Label(s.Name); len(errs) > 0 {
			return fmt.Errorf("node name %q: %s", s.Name, strings.Join(errs, "; "))
		}
		if seen[s.Name] {
			return fmt.Errorf("two nodes named %q", s.Name)
		}
		seen[s.Name] = true
		switch s.Runtime {
		case "":
			s.Runtime = RuntimeContainerd
		case RuntimeContainerd, RuntimeCRIO:
		default:
			return fmt.Errorf("node %s: unknown runtime %q (%q or %q)", s.Name, s.Runtime, RuntimeContainerd, RuntimeCRIO)
		}
	}
	return nil
}

func envDefault(v, env, def string) string {
	if v != "" {
		return v
	}
	if v = os.Getenv(env); v != "" {
		return v
	}
	return def
}

// boundPaths are the host paths a node's kubelet, runtime and CNI use
// whatever their configuration says, each bound over by a directory of
// the node's own (named here) in its mount namespace. Shared, the nodes
// delete each other's data: a kubelet's container GC removes the
// /var/log/pods directories of pods it does not know, and the CNI result
// cache, the device plugin socket (/var/lib/kubelet/device-plugins) and
// the shims' sockets (/run/containerd/s) would collide.
var boundPaths = []struct{ name, path string }{
	{"var-lib-kubelet", "/var/lib/kubelet"},
	{"var-log-pods", "/var/log/pods"},
	{"var-lib-cni", "/var/lib/cni"},
	{"run-containerd", "/run/containerd"},
}

func (c *Cluster) makeSharedDir() error {
	if c.SharedDir = c.opts.SharedDir; c.SharedDir == "" {
		c.SharedDir, c.ownsShared = filepath.Join(c.Dir, "shared"), true
	}
	abs, err := filepath.Abs(c.SharedDir)
	if err != nil {
		return err
	}
	c.SharedDir = abs
	// Under a bound path, the nodes would each see their own.
	for _, b := range boundPaths {
		if abs == b.path || strings.HasPrefix(abs, b.path+"/") {
			return fmt.Errorf("%s is under %s, which each node has its own of", abs, b.path)
		}
	}
	return os.MkdirAll(abs, 0o755)
}

// makeNodes gives every node its directories, its namespaces with the
// bound paths, and its link to the bridge, with routes to every other
// node's pods.
func (c *Cluster) makeNodes(ctx context.Context) error {
	for i, s := range c.opts.Nodes {
		m := &Member{Name: s.Name, Runtime: s.Runtime, IP: c.bridge.nodeIP(i), PodCIDR: c.bridge.podCIDR(i),
			Dir: filepath.Join(c.Dir, s.Name), Run: filepath.Join(c.Run, s.Name),
			StasisRoot: s.StasisRoot, StasisRunRoot: s.StasisRunRoot}
		if m.StasisRoot == "" {
			m.StasisRoot = filepath.Join(m.Dir, "stasis")
		}
		if m.StasisRunRoot == "" {
			m.StasisRunRoot = filepath.Join(m.Run, "stasis")
		}
		c.Nodes = append(c.Nodes, m)
		if err := m.make(ctx, c, s, i); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
	}
	for _, m := range c.Nodes {
		for _, other := range c.Nodes {
			if other != m {
				if err := routePods(m.ns, other.PodCIDR, other.IP); err != nil {
					return fmt.Errorf("%s: %w", m.Name, err)
				}
			}
		}
	}
	return nil
}

func (m *Member) make(ctx context.Context, c *Cluster, s NodeSpec, i int) error {
	for _, d := range []string{m.Dir, m.Run, m.StasisRoot, m.StasisRunRoot, filepath.Join(m.Dir, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	m.w = &worker{name: m.Name, ip: m.IP, dir: m.Dir, run: m.Run, runtime: m.Runtime,
		opts: Options{K8sBin: c.opts.K8sBin, ContainerdBin: c.opts.ContainerdBin, StasisRunc: c.opts.StasisRunc,
			StasisRoot: m.StasisRoot, StasisRunRoot: m.StasisRunRoot, StasisAgentSocket: s.StasisAgentSocket,
			StasisClusterKey: c.opts.StasisClusterKey, StasisTrustedKeys: c.opts.StasisTrustedKeys, Log: c.opts.Log},
		crioBin: c.opts.CRIOBin, apiServer: c.apiURL(c.HostIP),
		// Named after the bridge, which is this cluster's alone.
		cgroupRoot: c.bridge.name + "-" + m.Name, bridge: "cni0", podCIDR: m.PodCIDR,
		// Its own network namespace: every node can have the usual port.
		kubeletPort: 10250, command: m.Command, procs: procs{logDir: filepath.Join(m.Dir, "logs")}}
	m.KubeletURL = m.w.kubeletURL()
	// A cgroup root of this name is a crashed run's: the bridge, which
	// this cluster now holds, was free.
	killCgroup(m.w.cgroupRoot)
	removeCgroups(m.w.cgroupRoot)
	var err error
	if m.ns, err = newNamespaces(ctx, filepath.Join(m.Dir, "logs", "holder.log")); err != nil {
		return err
	}
	for _, b := range boundPaths {
		src := filepath.Join(m.Dir, "mnt", b.name)
		if strings.HasPrefix(b.path, "/run/") {
			src = filepath.Join(m.Run, "mnt", b.name)
		}
		if err := os.MkdirAll(src, 0o700); err != nil {
			return err
		}
		if err := m.ns.bind(src, b.path); err != nil {
			return err
		}
	}
	if m.Runtime == RuntimeCRIO {
		if err := m.hideHugepages(); err != nil {
			return err
		}
	}
	return c.bridge.link(m.ns, c.bridge.veth(i), m.IP, m.PodCIDR)
}

// hideHugepages shows the node's kubelet no huge page sizes, so that it
// asks for no hugetlb limits. It asks for a limit of 0 for every size
// the host has, and CRI-O, which takes the hugetlb controller for present
// when /proc/cgroups lists it, passes them to runc; on a cgroup v1 host
// whose hugetlb controller is left to cgroup2 (no v1 hierarchy), runc
// then fails every container ("cannot set hugetlb limit"). containerd
// looks for the v1 hierarchy and drops the limits itself.
func (m *Member) hideHugepages() error {
	empty := filepath.Join(m.Dir, "mnt", "no-hugepages")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return err
	}
	return m.ns.bind(empty, "/sys/kernel/mm/hugepages")
}

// writePKI makes the cluster's certificates, and each node's kubelet's in
// the node's directory.
func (c *Cluster) writePKI(ctx context.Context) error {
	if err := c.ControlPlane.writePKI(ctx); err != nil {
		return err
	}
	for _, m := range c.Nodes {
		dir := filepath.Join(m.Dir, "pki")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		m.w.pki, m.w.ca = c.pki.in(dir), c.CA
		if err := m.w.issueCerts(ctx); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
	}
	return nil
}

// eachNode is a step done for every node in turn.
func (c *Cluster) eachNode(fn func(*Member, context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, m := range c.Nodes {
			t := time.Now()
			if err := fn(m, ctx); err != nil {
				return fmt.Errorf("%s: %w", m.Name, err)
			}
			logf(c.opts.Log, "  %s: %.1fs", m.Name, time.Since(t).Seconds())
		}
		return nil
	}
}

func (c *Cluster) importImages(ctx context.Context) error {
	images, err := nodeImages(c.Dir)
	if err != nil {
		return err
	}
	return c.eachNode(func(m *Member, _ context.Context) error { return m.w.importImages(images) })(ctx)
}

func (c *Cluster) waitReady(ctx context.Context) error {
	for _, m := range c.Nodes {
		if err := m.w.waitReady(ctx, c.Client); err != nil {
			return err
		}
		logf(c.opts.Log, "  %s Ready %.1fs after the start", m.Name, time.Since(c.started).Seconds())
	}
	return c.finish(ctx)
}

// Node is the member named name, nil if there is none.
func (c *Cluster) Node(name string) *Member {
	for _, m := range c.Nodes {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Stop ends the cluster and removes what it made: processes (pods and
// whatever else runs in a node's namespaces included), the namespaces
// with their mounts, cgroups, veths, routes, the bridge and the
// directories.
func (c *Cluster) Stop() {
	for _, m := range c.Nodes {
		m.stop()
	}
	c.ControlPlane.stop()
	if c.bridge != nil {
		for i, m := range c.Nodes {
			exec.Command("ip", "route", "del", m.PodCIDR).Run()
			exec.Command("ip", "link", "del", c.bridge.veth(i)).Run()
		}
		c.bridge.remove()
	}
	// Nothing of the nodes is mounted on the host; a test's own mounts
	// might be.
	unmountUnder(c.Dir, c.Run)
	if c.Run != "" {
		os.RemoveAll(c.Run)
	}
	keep := os.Getenv("STASIS_KEEP_KUBENODE") != ""
	if c.ownsShared && !keep {
		os.RemoveAll(c.SharedDir)
	}
	if c.Dir != "" && !keep {
		os.RemoveAll(c.Dir)
	}
}

func (m *Member) startRuntime(ctx context.Context) error { return m.w.startRuntime(ctx) }
func (m *Member) startKubelet(ctx context.Context) error { return m.w.startKubelet(ctx) }

// stop stops the kubelet and the runtime, kills the pods and whatever
// else runs in the node's namespaces, and removes its cgroups.
func (m *Member) stop() {
	if m.w != nil {
		m.w.stop()
	}
	if m.ns != nil {
		m.ns.stop()
	}
	if m.w != nil {
		removeCgroups(m.w.cgroupRoot)
	}
}

// Command runs a program in the node's network and mount namespaces, as
// the node's own programs run (a node's agent, say), in the caller's
// working directory (or cmd.Dir). Stop kills what is left of it.
func (m *Member) Command(name string, args ...string) *exec.Cmd {
	return m.ns.command(name, args...)
}

// Pid is the process holding the node's namespaces, for nsenter -t.
func (m *Member) Pid() int { return m.ns.pid() }

// Socket is the node's CRI runtime's address (containerd's or CRI-O's).
func (m *Member) Socket() string { return m.w.socket() }

// RuncRoot is where the node's runtime keeps runc's state of the pods'
// containers.
func (m *Member) RuncRoot() string { return m.w.runcRoot() }

// KubeletServing is the kubelet's serving certificate and key, for
// system:node:<name> and the node's IP, signed by the cluster CA. The
// node's agent serves with it.
func (m *Member) KubeletServing() (cert, key string) { return m.w.kubeletServing() }

// ImportImage puts an image archive (docker or OCI) into the node's
// runtime, where pods with imagePullPolicy Never find it.
func (m *Member) ImportImage(tarball string) error { return m.w.importImage(tarball) }

// ImportRootfs imports a rootfs tar as a one-layer image ref with the
// given entrypoint into the node's runtime.
func (m *Member) ImportRootfs(ref, rootfsTar string, entrypoint []string) error {
	return m.w.importRootfs(ref, rootfsTar, entrypoint)
}

// Ctr runs containerd's ctr in the Kubernetes namespace of a containerd
// node.
func (m *Member) Ctr(args ...string) (string, error) {
	if m.Runtime != RuntimeContainerd {
		return "", fmt.Errorf("%s runs %s, not containerd", m.Name, m.Runtime)
	}
	return m.w.ctr(args...)
}

// Crictl runs crictl against a CRI-O node.
func (m *Member) Crictl(args ...string) (string, error) {
	if m.Runtime != RuntimeCRIO {
		return "", fmt.Errorf("%s runs %s, not CRI-O", m.Name, m.Runtime)
	}
	return m.w.crictl(args...)
}

// LogTail is the end of a node component's log ("kubelet", "containerd",
// "crio"), for a failure message.
func (m *Member) LogTail(name string, lines int) string { return m.w.procs.logTail(name, lines) }
