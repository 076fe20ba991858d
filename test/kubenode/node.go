// Package kubenode starts a real single-node Kubernetes for the tests and
// benchmarks: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd and a kubelet, all built from the Go module
// proxy (hack/k8s, hack/containerd), with the RuntimeClass handler "stasis"
// pointing at stasis-runc. Everything it starts lives under its own
// directories and is removed by Stop, so a host running Podman or other
// tests is left as it was.
package kubenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
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
	Name, IP   string
	Dir, Run   string // data and runtime state (sockets)
	Kubeconfig string // system:masters
	Config     *rest.Config
	Client     *kubernetes.Clientset
	// KubeletURL is the kubelet's API, for its checkpoint endpoint.
	KubeletURL string
	// AdminCert and AdminKey are the system:masters client pair, which
	// the kubelet accepts too; CA is the cluster CA.
	AdminCert, AdminKey, CA string

	opts  Options
	procs []*proc
	pki   *pki
	ports struct{ etcd, etcdPeer, api, kubelet, cm, sched int }
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
}

func (n *Node) logf(format string, args ...any) {
	if n.opts.Log != nil {
		fmt.Fprintf(n.opts.Log, "[kubenode] "+format+"\n", args...)
	}
}

// Start brings the cluster up and returns once the node is Ready and the
// default ServiceAccount exists. On failure it stops what it started.
func Start(ctx context.Context, o Options) (_ *Node, err error) {
	if o.K8sBin == "" {
		if o.K8sBin = os.Getenv("STASIS_K8S_BIN"); o.K8sBin == "" {
			o.K8sBin = "/var/cache/stasis/k8s/bin"
		}
	}
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
	for _, p := range []*int{&n.ports.etcd, &n.ports.etcdPeer, &n.ports.api, &n.ports.kubelet, &n.ports.cm, &n.ports.sched} {
		if *p, err = freePort(); err != nil {
			return nil, err
		}
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"certificates", n.writePKI},
		{"etcd and kube-apiserver", n.startControlPlane},
		{"controller-manager and scheduler", n.startControllers},
		{"containerd", n.startContainerd},
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
		n.logf("%s: %.1fs", s.name, time.Since(t).Seconds())
	}
	return n, nil
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

func (n *Node) writePKI(context.Context) error {
	dir := n.path("pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p, err := newPKI(dir)
	if err != nil {
		return err
	}
	n.pki, n.CA = p, p.path("ca.pem")
	ip := net.ParseIP(n.IP)
	loop := net.ParseIP("127.0.0.1")
	certs := []struct {
		file, cn, org string
		ips           []net.IP
		dns           []string
	}{
		{"apiserver", "kube-apiserver", "", []net.IP{loop, ip, net.ParseIP("10.96.0.1")},
			[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"kubelet-serving", "system:node:" + n.Name, "system:nodes", []net.IP{loop, ip}, []string{n.Name, "localhost"}},
		{"admin", "admin", "system:masters", nil, nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", nil, nil},
		{"kubelet", "system:node:" + n.Name, "system:nodes", nil, nil},
		{"controller-manager", "system:kube-controller-manager", "", nil, nil},
		{"scheduler", "system:kube-scheduler", "", nil, nil},
	}
	for _, c := range certs {
		if _, _, err := p.issue(c.file, c.cn, c.org, c.ips, c.dns); err != nil {
			return err
		}
	}
	n.AdminCert, n.AdminKey = p.path("admin.pem"), p.path("admin-key.pem")
	// The service-account signing key: any key the API server can read.
	if err := os.Link(p.path("ca-key.pem"), p.path("sa-key.pem")); err != nil {
		return err
	}
	for _, u := range []string{"admin", "kubelet", "controller-manager", "scheduler"} {
		if err := n.writeKubeconfig(u); err != nil {
			return err
		}
	}
	n.Kubeconfig = n.path("admin.kubeconfig")
	return nil
}

func (n *Node) writeKubeconfig(user string) error {
	return os.WriteFile(n.path(user+".kubeconfig"), []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: stasis, cluster: {server: "https://127.0.0.1:%d", certificate-authority: %q}}]
users: [{name: %s, user: {client-certificate: %q, client-key: %q}}]
contexts: [{name: stasis, context: {cluster: stasis, user: %s}}]
current-context: stasis
`, n.ports.api, n.CA, user, n.pki.path(user+".pem"), n.pki.path(user+"-key.pem"), user)), 0o600)
}

// start runs a component with its output in logs/<name>.log.
func (n *Node) start(name string, env []string, bin string, args ...string) error {
	if err := os.MkdirAll(n.path("logs"), 0o700); err != nil {
		return err
	}
	logf, err := os.Create(n.path("logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: a test's Ctrl-C reaches the test, which then
	// stops the node in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	n.procs = append(n.procs, &proc{name: name, cmd: cmd, log: logf})
	return nil
}

// LogTail is the end of a component's log, for a failure message.
func (n *Node) LogTail(name string, lines int) string {
	b, _ := os.ReadFile(n.path("logs", name+".log"))
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

func (n *Node) startControlPlane(ctx context.Context) error {
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return fmt.Errorf("etcd is needed (Debian's etcd-server): %w", err)
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", n.ports.etcd)
	peer := fmt.Sprintf("http://127.0.0.1:%d", n.ports.etcdPeer)
	if err := n.start("etcd", nil, etcd, "--name", "stasis", "--data-dir", n.path("etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "stasis="+peer); err != nil {
		return err
	}
	p := n.pki.path
	if err := n.start("kube-apiserver", nil, filepath.Join(n.opts.K8sBin, "kube-apiserver"),
		// All addresses: in-cluster pods reach it at the node's address
		// (there is no kube-proxy for the service address).
		"--etcd-servers", client, "--bind-address", "0.0.0.0", "--secure-port", fmt.Sprint(n.ports.api),
		"--advertise-address", n.IP,
		"--tls-cert-file", p("apiserver.pem"), "--tls-private-key-file", p("apiserver-key.pem"),
		"--client-ca-file", n.CA,
		"--kubelet-client-certificate", p("apiserver-kubelet-client.pem"), "--kubelet-client-key", p("apiserver-kubelet-client-key.pem"),
		"--kubelet-certificate-authority", n.CA, "--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--service-account-key-file", p("sa-key.pem"), "--service-account-signing-key-file", p("sa-key.pem"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--service-cluster-ip-range", "10.96.0.0/16", "--allow-privileged=true"); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", n.Kubeconfig)
	if err != nil {
		return err
	}
	n.Config = cfg
	if n.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	// readyz includes the RBAC bootstrap, without which the controller
	// manager cannot even read its configuration and exits.
	return n.poll(ctx, 90*time.Second, "kube-apiserver", func() (bool, error) {
		b, err := n.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, b)
		}
		_, err = n.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

func (n *Node) startControllers(context.Context) error {
	p := n.pki.path
	kc := n.path("controller-manager.kubeconfig")
	if err := n.start("kube-controller-manager", nil, filepath.Join(n.opts.K8sBin, "kube-controller-manager"),
		"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--service-account-private-key-file", p("sa-key.pem"), "--root-ca-file", n.CA,
		"--use-service-account-credentials=true", "--cluster-signing-cert-file", n.CA,
		"--cluster-signing-key-file", p("ca-key.pem"), "--service-cluster-ip-range", "10.96.0.0/16",
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(n.ports.cm)); err != nil {
		return err
	}
	sc := n.path("scheduler.kubeconfig")
	return n.start("kube-scheduler", nil, filepath.Join(n.opts.K8sBin, "kube-scheduler"),
		"--kubeconfig", sc, "--authentication-kubeconfig", sc, "--authorization-kubeconfig", sc,
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(n.ports.sched))
}

// APIPort is the API server's port, on every address of the node: pods
// reach it at the node's address (no kube-proxy serves the service address).
func (n *Node) APIPort() int { return n.ports.api }

// ContainerdPid is containerd's process: one in the host's mount
// namespace that this host lets a pod enter (its PID 1 it does not).
func (n *Node) ContainerdPid() int {
	for _, p := range n.procs {
		if p.name == "containerd" {
			return p.cmd.Process.Pid
		}
	}
	return 0
}

// Socket is containerd's address.
func (n *Node) Socket() string { return filepath.Join(n.Run, "containerd.sock") }

// RuncRoot is where the shims keep runc's state of the pods' containers.
func (n *Node) RuncRoot() string { return filepath.Join(n.Run, "runc") }

// bridge is the node's CNI bridge, named so Stop can find it.
const bridge = "stasiskube0"

func (n *Node) startContainerd(ctx context.Context) error {
	cni := n.path("cni")
	if err := os.MkdirAll(cni, 0o700); err != nil {
		return err
	}
	// No masquerading: the pods only talk to this host, and no iptables
	// chains are left to clean up.
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "stasis-kube", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.244.77.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, bridge, filepath.Join(n.Run, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(cni, "10-stasis.conflist"), []byte(conflist), 0o600); err != nil {
		return err
	}
	runtimeCfg := filepath.Join(n.Dir, "stasis-runtime.json")
	if err := writeRuntimeConfig(runtimeCfg, n.opts); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
# The host may run an NRI-enabled runtime of its own.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q

[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE here: the pause container's -998 would fail.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = %q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.stasis]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["restore.stasis.dev/*", "stasis.dev/*"]
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.stasis.options]
        BinaryName = %q
        Root = %q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
`, n.path("containerd"), filepath.Join(n.Run, "containerd"), n.Socket(), PauseImage,
		n.RuncRoot(), n.opts.StasisRunc, n.RuncRoot(), cni)
	if err := os.WriteFile(n.path("containerd.toml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	path := n.opts.ContainerdBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if err := n.start("containerd", []string{"PATH=" + path, "STASIS_RUNTIME_CONFIG=" + runtimeCfg},
		filepath.Join(n.opts.ContainerdBin, "containerd"), "--config", n.path("containerd.toml")); err != nil {
		return err
	}
	return n.poll(ctx, 60*time.Second, "containerd", func() (bool, error) {
		out, err := n.Ctr("version")
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, out)
		}
		return true, nil
	})
}

// Ctr runs containerd's ctr in the Kubernetes namespace.
func (n *Node) Ctr(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(n.opts.ContainerdBin, "ctr"),
		append([]string{"-a", n.Socket(), "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

func (n *Node) importImages(context.Context) error {
	pause, err := buildPause(n.Dir)
	if err != nil {
		return err
	}
	pauseFS, err := rootfsTar(nil, map[string][]byte{"pause": pause}, nil, "")
	if err != nil {
		return err
	}
	bb, err := BusyboxRootfs()
	if err != nil {
		return err
	}
	for _, i := range []struct {
		ref    string
		rootfs []byte
		entry  []string
	}{{PauseImage, pauseFS, []string{"/pause"}}, {BusyboxImage, bb, []string{"/bin/sh"}}} {
		tb := n.path("image.tar")
		if err := imageTarball(tb, i.ref, i.rootfs, i.entry); err != nil {
			return err
		}
		if err := n.ImportImage(tb); err != nil {
			return err
		}
	}
	return nil
}

// ImportImage puts an image archive (docker or OCI) into the node's
// containerd, where pods with imagePullPolicy Never find it.
func (n *Node) ImportImage(tarball string) error {
	if out, err := n.Ctr("images", "import", "--no-unpack", tarball); err != nil {
		return fmt.Errorf("ctr import %s: %v: %s", tarball, err, out)
	}
	return nil
}

func (n *Node) startKubelet(context.Context) error {
	p := n.pki.path
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
cgroupDriver: cgroupfs
cgroupRoot: /%s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, n.ports.kubelet, n.CA, p("kubelet-serving.pem"), p("kubelet-serving-key.pem"), cgroupRoot, n.Socket())
	if err := os.WriteFile(n.path("kubelet.yaml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	// The kubelet wants its cgroupRoot in every hierarchy already.
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, h := range hierarchies {
		if err := os.MkdirAll(filepath.Join(filepath.Dir(h), cgroupRoot), 0o755); err != nil {
			return err
		}
	}
	n.KubeletURL = fmt.Sprintf("https://%s:%d", n.IP, n.ports.kubelet)
	path := n.opts.ContainerdBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	return n.start("kubelet", []string{"PATH=" + path}, filepath.Join(n.opts.K8sBin, "kubelet"),
		"--config", n.path("kubelet.yaml"), "--kubeconfig", n.path("kubelet.kubeconfig"),
		"--root-dir", n.path("kubelet"), "--hostname-override", n.Name, "--node-ip", n.IP, "--v", "1")
}

func (n *Node) waitReady(ctx context.Context) error {
	err := n.poll(ctx, 120*time.Second, "node Ready", func() (bool, error) {
		node, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, fmt.Errorf("%s: %s", c.Reason, c.Message)
			}
		}
		return false, errors.New("no Ready condition yet")
	})
	if err != nil {
		return fmt.Errorf("%w\nkubelet log:\n%s", err, n.LogTail("kubelet", 15))
	}
	if err := n.poll(ctx, 60*time.Second, "default ServiceAccount", func() (bool, error) {
		_, err := n.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	}); err != nil {
		return err
	}
	_, err = n.Client.NodeV1().RuntimeClasses().Create(ctx, &nodev1.RuntimeClass{
		ObjectMeta: metav1.ObjectMeta{Name: "stasis"}, Handler: "stasis"}, metav1.CreateOptions{})
	return err
}

func (n *Node) poll(ctx context.Context, limit time.Duration, what string, ok func() (bool, error)) error {
	var last error
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		done, err := ok()
		if done {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not reached in %s: %v", what, limit, last)
}

// KubeletClient is an HTTP client for the kubelet's API as the admin.
func (n *Node) KubeletClient() (*http.Client, error) {
	cfg := rest.CopyConfig(n.Config)
	cfg.Timeout = 5 * time.Minute
	return rest.HTTPClientFor(cfg)
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
