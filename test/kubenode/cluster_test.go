package kubenode

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Two nodes on one host, containerd on both: each node's pods get
// addresses of its own subnet, a pod on one reaches a pod on the other,
// and Stop leaves nothing behind.
func TestCluster(t *testing.T) {
	testCluster(t, RuntimeContainerd)
}

// The same with CRI-O as the second node's runtime, as the migration
// tests want it: containerd to CRI-O.
func TestClusterCRIO(t *testing.T) {
	testCluster(t, RuntimeCRIO)
}

func testCluster(t *testing.T, runtimeB string) {
	o := ClusterOptions{Nodes: []NodeSpec{{Name: "node-a", Runtime: RuntimeContainerd}, {Name: "node-b", Runtime: runtimeB}},
		Log: testLog{t}}
	requireCluster(t, &o)
	o.StasisRunc = buildStasisRunc(t)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	t.Logf("StartCluster returned after %.1fs: nodes Ready, default ServiceAccount and RuntimeClass there", ready.Seconds())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			c.Stop()
		}
	})
	a, b := c.Node("node-a"), c.Node("node-b")

	checkNodeNamespaces(t, c)
	checkSharedDir(t, c)
	checkStasisHandler(ctx, t, c)

	// A web server on node-b, a client on node-a that fetches from it by
	// pod IP (with nc: busybox-static's wget crashes).
	server := busyboxPod("web", b.Name,
		"mkdir -p /www && echo hello-from-node-b > /www/index.html && exec httpd -f -p 8080 -h /www")
	serverIP := runPod(ctx, t, c, server)
	checkPodIP(t, b, serverIP)
	client := busyboxPod("client", a.Name, fmt.Sprintf(`for i in $(seq 1 60); do
  if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s 8080 | grep hello-from-node-b; then echo reached; exec sleep 3600; fi
  sleep 0.5
done
exit 1`, serverIP))
	clientIP := runPod(ctx, t, c, client)
	checkPodIP(t, a, clientIP)
	// The log comes from node-a's kubelet through the API server, which
	// calls it at node-a's address with its serving certificate.
	waitLog(ctx, t, c, "client", "hello-from-node-b\nreached")
	// The host reaches pods through the routes to their nodes.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + net.JoinHostPort(serverIP, "8080") + "/")
	if err != nil {
		t.Fatalf("host to pod %s on node-b: %v", serverIP, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != "hello-from-node-b" {
		t.Fatalf("host to pod on node-b: got %q", body)
	}
	checkPodLogs(ctx, t, c, "web", b)
	checkPodLogs(ctx, t, c, "client", a)
	// Each node's pods are under its own cgroup root.
	for _, m := range c.Nodes {
		if len(cgroupPids(m.w.cgroupRoot)) == 0 {
			t.Fatalf("no process under %s's cgroup root %s", m.Name, m.w.cgroupRoot)
		}
	}

	left := recordCluster(c)
	stopStart := time.Now()
	stopped = true
	c.Stop()
	t.Logf("Stop took %.1fs", time.Since(stopStart).Seconds())
	left.check(t)
	t.Logf("timings: StartCluster %.1fs, from its start to stopped and checked %.1fs", ready.Seconds(), time.Since(start).Seconds())
}

// requireCluster skips t when the cluster cannot run here, saying why.
func requireCluster(t *testing.T, o *ClusterOptions) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a cluster needs root: namespaces, cgroups, a kubelet and a runtime per node")
	}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	need := []string{filepath.Join(o.K8sBin, "kube-apiserver"), filepath.Join(o.K8sBin, "kubelet"),
		filepath.Join(o.ContainerdBin, "containerd"), filepath.Join(o.ContainerdBin, "containerd-shim-runc-v2")}
	for _, n := range o.Nodes {
		if n.Runtime == RuntimeCRIO {
			need = append(need, filepath.Join(o.CRIOBin, "crio"), filepath.Join(o.CRIOBin, "pinns"), filepath.Join(o.CRIOBin, "crictl"))
			break
		}
	}
	for _, p := range need {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is not built (hack/k8s/build.sh, hack/containerd/build.sh, hack/crio/build.sh build and cache it): %v", p, err)
		}
	}
	for _, p := range []string{"etcd", "unshare", "nsenter", "ip", "podman", "conmon", "/usr/sbin/runc"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is needed: %v", p, err)
		}
	}
}

func buildStasisRunc(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "stasis-runc")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/stasis-dev/stasis/cmd/stasis-runc")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build stasis-runc: %v\n%s", err, out)
	}
	return bin
}

type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// checkNodeNamespaces checks that each node's programs run in its own
// namespaces, with its own /var/lib/kubelet, and that the host reaches
// the node at its address.
func checkNodeNamespaces(t *testing.T, c *Cluster) {
	t.Helper()
	hostNet, _ := os.Readlink("/proc/self/ns/net")
	for _, m := range c.Nodes {
		out, err := m.Command("readlink", "/proc/self/ns/net").Output()
		if err != nil {
			t.Fatalf("%s: readlink in the node: %v", m.Name, err)
		}
		if got := strings.TrimSpace(string(out)); got != m.ns.net || got == hostNet {
			t.Fatalf("%s: a command runs in network namespace %s; the node's is %s, the host's %s", m.Name, got, m.ns.net, hostNet)
		}
		mounts, err := m.Command("cat", "/proc/self/mountinfo").Output()
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		if !mountedAt(string(mounts), "/var/lib/kubelet") || !mountedAt(string(mounts), "/sys/fs/cgroup/memory") {
			t.Fatalf("%s: its mount namespace lacks its /var/lib/kubelet or the cgroup hierarchies:\n%s", m.Name, mounts)
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(m.IP, "10250"), 5*time.Second)
		if err != nil {
			t.Fatalf("host to %s's kubelet: %v", m.Name, err)
		}
		conn.Close()
	}
}

func mountedAt(mountinfo, path string) bool {
	for _, l := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// checkSharedDir checks that what one node writes in the shared directory
// the other reads, at the same path.
func checkSharedDir(t *testing.T, c *Cluster) {
	t.Helper()
	f := filepath.Join(c.SharedDir, "from-"+c.Nodes[0].Name)
	if out, err := c.Nodes[0].Command("sh", "-c", "echo shared > "+f).CombinedOutput(); err != nil {
		t.Fatalf("write %s on %s: %v: %s", f, c.Nodes[0].Name, err, out)
	}
	out, err := c.Nodes[1].Command("cat", f).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "shared" {
		t.Fatalf("read %s on %s: %v: %q", f, c.Nodes[1].Name, err, out)
	}
}

// checkStasisHandler checks that every node's runtime has the handler
// "stasis", as the kubelet reports it. (A pod under it needs the node's
// agent, which asks stasis-runc's grants; the tests that start one run
// such pods.)
func checkStasisHandler(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	for _, m := range c.Nodes {
		var handlers []string
		err := poll(ctx, 30*time.Second, m.Name+" reporting the handler stasis", func() (bool, error) {
			node, err := c.Client.CoreV1().Nodes().Get(ctx, m.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			handlers = handlers[:0]
			for _, h := range node.Status.RuntimeHandlers {
				handlers = append(handlers, h.Name)
				if h.Name == "stasis" {
					return true, nil
				}
			}
			return false, fmt.Errorf("handlers %v", handlers)
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s (%s): runtime handlers %v", m.Name, m.Runtime, handlers)
	}
}

func busyboxPod(name, node, script string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: node, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: name, Image: BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", script}}}}}
}

// runPod creates p and waits until it runs; it returns the pod's IP.
func runPod(ctx context.Context, t *testing.T, c *Cluster, p *corev1.Pod) string {
	t.Helper()
	if _, err := c.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
	var ip string
	err := poll(ctx, 90*time.Second, "pod "+p.Name+" Running", func() (bool, error) {
		got, err := c.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ip = got.Status.PodIP
		if got.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod failed: %+v", got.Status)
		}
		return got.Status.Phase == corev1.PodRunning && ip != "", fmt.Errorf("phase %s, conditions %+v, containers %+v",
			got.Status.Phase, got.Status.Conditions, got.Status.ContainerStatuses)
	})
	if err != nil {
		m := c.Node(p.Spec.NodeName)
		t.Fatalf("%v\n%s runtime:\n%s\nkubelet:\n%s", err, m.Name, m.LogTail(m.Runtime, 15), m.LogTail("kubelet", 15))
	}
	return ip
}

// checkPodLogs checks that the kubelet of the pod's node keeps its logs
// in the node's own /var/log/pods, not the host's (where another node's
// kubelet would delete them as a pod it does not know).
func checkPodLogs(ctx context.Context, t *testing.T, c *Cluster, pod string, m *Member) {
	t.Helper()
	p, err := c.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := fmt.Sprintf("default_%s_%s", pod, p.UID)
	if _, err := os.Stat(filepath.Join("/var/log/pods", dir)); err == nil {
		t.Errorf("the log of pod %s is in the host's /var/log/pods", pod)
	}
	out, err := m.Command("ls", filepath.Join("/var/log/pods", dir)).CombinedOutput()
	if err != nil {
		t.Errorf("the log of pod %s is not in %s's /var/log/pods: %v: %s", pod, m.Name, err, out)
	}
}

func checkPodIP(t *testing.T, m *Member, ip string) {
	t.Helper()
	_, subnet, err := net.ParseCIDR(m.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	if !subnet.Contains(net.ParseIP(ip)) {
		t.Fatalf("a pod on %s has IP %s, outside its pod subnet %s", m.Name, ip, m.PodCIDR)
	}
	t.Logf("pod on %s: %s (subnet %s)", m.Name, ip, m.PodCIDR)
}

func waitLog(ctx context.Context, t *testing.T, c *Cluster, pod, want string) {
	t.Helper()
	err := poll(ctx, 60*time.Second, "log of "+pod, func() (bool, error) {
		b, err := c.Client.CoreV1().Pods("default").GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, err
		}
		return strings.Contains(string(b), want), fmt.Errorf("log so far: %q", b)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// leftovers is what a cluster made, to look for once it has stopped.
type leftovers struct {
	dirs       []string
	holders    []int
	namespaces []string // ns/net and ns/mnt links
	links      []string // bridge and veths
	cgroups    []string
	routes     []string
}

func recordCluster(c *Cluster) *leftovers {
	l := &leftovers{dirs: []string{c.Dir, c.Run}, links: []string{c.bridge.name}}
	for i, m := range c.Nodes {
		l.holders = append(l.holders, m.Pid())
		l.namespaces = append(l.namespaces, m.ns.net, m.ns.mnt)
		l.links = append(l.links, c.bridge.veth(i))
		l.cgroups = append(l.cgroups, m.w.cgroupRoot)
		l.routes = append(l.routes, m.PodCIDR)
	}
	return l
}

func (l *leftovers) check(t *testing.T) {
	t.Helper()
	for _, d := range l.dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s is left", d)
		}
	}
	for _, pid := range l.holders {
		if _, err := os.Stat(procPath(pid, "ns")); err == nil {
			t.Errorf("holder %d still runs", pid)
		}
	}
	// A namespace lives while a process is in it or holds it open, or a
	// mount (an nsfs bind mount, as `ip netns add` makes) refers to it.
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, ns := range []string{"net", "mnt"} {
			if link, _ := os.Readlink(filepath.Join(p, "ns", ns)); l.isNamespace(link) {
				t.Errorf("process %s is in the node namespace %s: %s", filepath.Base(p), link, cmdline(p))
			}
		}
		fds, _ := filepath.Glob(filepath.Join(p, "fd", "*"))
		for _, fd := range fds {
			if link, _ := os.Readlink(fd); l.isNamespace(link) {
				t.Errorf("process %s holds the node namespace %s open: %s", filepath.Base(p), link, cmdline(p))
			}
		}
		if cl := cmdline(p); strings.Contains(cl, l.dirs[0]) || strings.Contains(cl, l.dirs[1]) {
			t.Errorf("process %s is left: %s", filepath.Base(p), cl)
		}
		f, err := os.Open(filepath.Join(p, "mountinfo"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			for _, ns := range l.namespaces {
				if strings.Contains(line, ns) {
					t.Errorf("a mount of process %s refers to the node namespace %s: %s", filepath.Base(p), ns, line)
				}
			}
			if strings.Contains(line, l.dirs[0]+"/") || strings.Contains(line, l.dirs[1]+"/") {
				t.Errorf("a mount under the cluster's directories is left (process %s): %s", filepath.Base(p), line)
			}
		}
		f.Close()
	}
	for _, name := range l.links {
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("link %s is left", name)
		}
	}
	for _, root := range l.cgroups {
		if dirs := cgroupDirs(root); len(dirs) > 0 {
			t.Errorf("cgroups are left: %v", dirs)
		}
	}
	for _, cidr := range l.routes {
		if out, _ := exec.Command("ip", "route", "show", cidr).Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("route is left: %s", out)
		}
	}
}

func (l *leftovers) isNamespace(link string) bool {
	for _, ns := range l.namespaces {
		if link == ns {
			return true
		}
	}
	return false
}

func cmdline(procDir string) string {
	b, _ := os.ReadFile(filepath.Join(procDir, "cmdline"))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}
