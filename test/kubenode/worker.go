package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Container runtimes a node can run.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "crio"
)

// worker is one node's container runtime and kubelet. The single Node
// runs them in the host's namespaces; a cluster Member runs them in
// namespaces of its own, through command.
type worker struct {
	name, ip string
	dir, run string // data and runtime state (sockets)
	runtime  string // RuntimeContainerd or RuntimeCRIO
	// opts are the binaries and this node's stasis store and keys.
	opts    Options
	crioBin string
	// pki issues the kubelet's certificates, into its own directory.
	pki *pki
	ca  string
	// apiServer is the API server's URL as this node reaches it.
	apiServer string
	// cgroupRoot is the kubelet's: one per node, as a kubelet kills what
	// it finds there of pods it does not know.
	cgroupRoot  string
	bridge      string // the CNI bridge, in the node's network namespace
	podCIDR     string
	kubeletPort int
	// command makes the command line of a node program: in the host's
	// namespaces or in the node's own.
	command func(name string, args ...string) *exec.Cmd
	procs   procs
}

func (w *worker) path(parts ...string) string {
	return filepath.Join(append([]string{w.dir}, parts...)...)
}

func (w *worker) kubeletURL() string {
	return "https://" + net.JoinHostPort(w.ip, strconv.Itoa(w.kubeletPort))
}

// socket is the CRI runtime's address.
func (w *worker) socket() string {
	if w.runtime == RuntimeCRIO {
		return filepath.Join(w.run, "crio.sock")
	}
	return filepath.Join(w.run, "containerd.sock")
}

// runcRoot is where runc keeps the state of the pods' containers.
func (w *worker) runcRoot() string { return filepath.Join(w.run, "runc") }

// searchPath is the PATH of the runtime and kubelet: the runtime's own
// binaries (shims) and CRIU in /usr/local/sbin first.
func (w *worker) searchPath() string {
	return "PATH=" + w.opts.ContainerdBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// issueCerts signs the kubelet's serving certificate (its node's name and
// address, which the API server checks when it calls the kubelet) and its
// client certificate (system:node:<name>, which the Node authorizer and
// NodeRestriction need), and writes its kubeconfig.
func (w *worker) issueCerts(context.Context) error {
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(w.ip)}
	if _, _, err := w.pki.issue("kubelet-serving", "system:node:"+w.name, "system:nodes", ips, []string{w.name, "localhost"}); err != nil {
		return fmt.Errorf("issue kubelet serving certificate: %w", err)
	}
	cert, key, err := w.pki.issue("kubelet", "system:node:"+w.name, "system:nodes", nil, nil)
	if err != nil {
		return fmt.Errorf("issue kubelet client certificate: %w", err)
	}
	return writeKubeconfig(w.path("kubelet.kubeconfig"), w.apiServer, w.ca, "kubelet", cert, key)
}

// kubeletServing is the kubelet's serving certificate and key.
func (w *worker) kubeletServing() (cert, key string) {
	return w.pki.path("kubelet-serving.pem"), w.pki.path("kubelet-serving-key.pem")
}

// writeCNI writes the pod network: a bridge with the node's pod subnet.
// No masquerading: pods talk to hosts and pods of the cluster only, and no
// iptables chains are left to clean up.
func (w *worker) writeCNI(name string) (dir string, err error) {
	dir = w.path("cni")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, name, w.bridge, filepath.Join(w.run, "cni-ipam"), w.podCIDR)
	return dir, os.WriteFile(filepath.Join(dir, "10-stasis.conflist"), []byte(conflist), 0o600)
}

// startRuntime starts the node's CRI runtime and waits until it answers.
func (w *worker) startRuntime(ctx context.Context) error {
	if w.runtime == RuntimeCRIO {
		return w.startCRIO(ctx)
	}
	return w.startContainerd(ctx)
}

func (w *worker) startContainerd(ctx context.Context) error {
	cni, err := w.writeCNI("stasis-kube")
	if err != nil {
		return err
	}
	runtimeCfg := w.path("stasis-runtime.json")
	if err := writeRuntimeConfig(runtimeCfg, w.opts); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
# The host may run an NRI-enabled runtime of its own, and a cluster's nodes
# would share its socket, /var/run/nri/nri.sock.
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
`, w.path("containerd"), filepath.Join(w.run, "containerd"), w.socket(), PauseImage,
		w.runcRoot(), w.opts.StasisRunc, w.runcRoot(), cni)
	if err := os.WriteFile(w.path("containerd.toml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := w.procs.start("containerd", []string{w.searchPath(), "STASIS_RUNTIME_CONFIG=" + runtimeCfg},
		w.command(filepath.Join(w.opts.ContainerdBin, "containerd"), "--config", w.path("containerd.toml"))); err != nil {
		return err
	}
	return poll(ctx, 60*time.Second, "containerd", func() (bool, error) {
		out, err := w.ctr("version")
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, out)
		}
		return true, nil
	})
}

// ctr runs containerd's ctr in the Kubernetes namespace. It runs on the
// host: the socket is a file under the node's run directory, which every
// mount namespace sees.
func (w *worker) ctr(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(w.opts.ContainerdBin, "ctr"),
		append([]string{"-a", w.socket(), "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

// importImages puts the images every node has into its runtime.
func (w *worker) importImages(images []nodeImage) error {
	for _, i := range images {
		tb := w.path("image.tar")
		if err := imageTarball(tb, i.ref, i.rootfs, i.entry); err != nil {
			return fmt.Errorf("image %s: %w", i.ref, err)
		}
		if err := w.importImage(tb); err != nil {
			return err
		}
	}
	return nil
}

// importImage puts an image archive (docker or OCI) into the runtime's
// store, where pods with imagePullPolicy Never find it.
func (w *worker) importImage(tarball string) error {
	if w.runtime == RuntimeCRIO {
		// Podman shares CRI-O's store; in the node's mount namespace, so
		// that any mount it makes stays there.
		if out, err := w.podman("load", "-i", tarball).CombinedOutput(); err != nil {
			return fmt.Errorf("podman load %s: %v: %s", tarball, err, out)
		}
		return nil
	}
	if out, err := w.ctr("images", "import", "--no-unpack", tarball); err != nil {
		return fmt.Errorf("ctr import %s: %v: %s", tarball, err, out)
	}
	return nil
}

func (w *worker) startKubelet(context.Context) error {
	cert, key := w.kubeletServing()
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
`, w.kubeletPort, w.ca, cert, key, w.cgroupRoot, w.socket())
	if err := os.WriteFile(w.path("kubelet.yaml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := makeCgroupRoot(w.cgroupRoot); err != nil {
		return err
	}
	return w.procs.start("kubelet", []string{w.searchPath()}, w.command(filepath.Join(w.opts.K8sBin, "kubelet"),
		"--config", w.path("kubelet.yaml"), "--kubeconfig", w.path("kubelet.kubeconfig"),
		"--root-dir", w.path("kubelet"), "--hostname-override", w.name, "--node-ip", w.ip, "--v", "1"))
}

// makeCgroupRoot makes a kubelet's cgroupRoot, which it wants to find in
// every hierarchy.
func makeCgroupRoot(root string) error {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, h := range hierarchies {
		if err := os.MkdirAll(filepath.Join(filepath.Dir(h), root), 0o755); err != nil {
			return fmt.Errorf("cgroup root: %w", err)
		}
	}
	return nil
}

// waitReady waits until the API server has the node Ready.
func (w *worker) waitReady(ctx context.Context, client kubernetes.Interface) error {
	err := poll(ctx, 120*time.Second, w.name+" Ready", func() (bool, error) {
		node, err := client.CoreV1().Nodes().Get(ctx, w.name, metav1.GetOptions{})
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
		return fmt.Errorf("%w\nkubelet log:\n%s", err, w.procs.logTail("kubelet", 15))
	}
	return nil
}

// stop stops the kubelet and the runtime, and kills the pods: shims and
// conmons outlive their runtime by design.
func (w *worker) stop() {
	w.procs.stop(func(name string) {
		if name == RuntimeContainerd || name == RuntimeCRIO {
			w.killPods()
		}
	})
	w.killPods() // when the runtime never started
}

// killPods kills the shims of this node's containerd and every process in
// the pods' cgroups.
func (w *worker) killPods() {
	if w.run == "" {
		return
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range procs {
		b, _ := os.ReadFile(c)
		if strings.Contains(string(b), "containerd-shim") && strings.Contains(string(b), w.socket()) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(c))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	killCgroup(w.cgroupRoot)
}
