package kube

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/test/kubenode"
)

// A pod checkpointed under containerd (a Checkpoint on the node) restores
// under CRI-O 1.34, driven by crictl, through the runtime handler "stasis":
// stasis-runc does the same restore under conmon as under containerd's
// shim, from the same node store.
func TestContainerdCheckpointRestoresUnderCRIO(t *testing.T) {
	requireNode(t)
	crioBin := filepath.Join(envOr("STASIS_CRIO_BIN", "/var/cache/stasis/crio/bin"), "crio")
	if _, err := os.Stat(crioBin); err != nil {
		t.Fatalf("CRI-O is needed (hack/crio/build.sh builds it): %v", err)
	}
	// CRI-O here is a node of its own, "crio-node", which no kubelet runs:
	// its agent answers for the pods bound to it.
	sock, _ := startNodeAgent(t, "crio-node")
	crio, err := kubenode.StartCRIO(ctx, kubenode.Options{StasisRunc: filepath.Join(filepath.Dir(stasisBin), "stasis-runc"),
		StasisRoot: stasisRoot, StasisRunRoot: stasisRunRoot, StasisAgentSocket: sock,
		StasisClusterKey: clusterKey + ".pub"}, crioBin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(crio.Stop)

	ns := namespace(t, "cross")
	p := counterPod(ns, "web")
	no := false
	p.Spec.AutomountServiceAccountToken = &no // CRI-O, driven by hand, mounts no token
	createPod(t, p)
	waitReady(t, ns, "web")
	waitCount(t, ns, "web", "counter", 3)
	ck := checkpointPod(t, ns, "web-1", "web", nil)
	at, _ := counts(t, ns, "web", "counter")
	// The pod CRI-O runs, as the API server knows it: bound to crio-node,
	// naming its grant.
	warmStart(t, ns, "crio", stasisv1.WarmStartSpec{CheckpointRef: &stasisv1.CheckpointReference{Name: ck.Name}})
	apiPod := counterPod(ns, "web-crio")
	apiPod.Spec.NodeName = "crio-node"
	apiPod.Annotations = map[string]string{stasisv1.AnnotationRestoreFrom: "WarmStart/crio"}
	apiPod, err = node.Client.CoreV1().Pods(ns).Create(ctx, apiPod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// No kubelet confirms its end: gone at once.
		zero := int64(0)
		node.Client.CoreV1().Pods(ns).Delete(ctx, "web-crio", metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})

	hosts := filepath.Join(crio.Dir, "hosts")
	term := filepath.Join(crio.Dir, "termination-log")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	os.WriteFile(term, nil, 0o644)
	podCfg, _ := crio.WriteJSON("pod.json", map[string]any{
		"metadata": map[string]any{"name": "web-crio", "namespace": ns, "uid": string(apiPod.UID)},
		"hostname": "web-crio", "log_directory": filepath.Join(crio.Dir, "pod-logs", "web-crio"),
		"linux": map[string]any{"cgroup_parent": kubenode.CgroupParent,
			"security_context": map[string]any{"namespace_options": map[string]any{"pid": 1}}},
	})
	ctrCfg, _ := crio.WriteJSON("ctr.json", map[string]any{
		"metadata": map[string]any{"name": "counter"},
		"image":    map[string]any{"image": kubenode.BusyboxImage},
		"command":  []string{"sh", "-c", counterScript},
		"log_path": "counter.log",
		// What the kubelet bind-mounts into every container; the
		// checkpoint has these mounts and CRIU wants them back.
		"mounts": []map[string]any{{"container_path": "/etc/hosts", "host_path": hosts},
			{"container_path": "/dev/termination-log", "host_path": term}},
		// What the kubelet labels every container with, and the pod's
		// annotation that CRI-O's allowed_annotations passes on.
		"labels": map[string]string{"io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.name": "web-crio",
			"io.kubernetes.pod.uid": string(apiPod.UID)},
		"annotations": map[string]string{stasisv1.AnnotationRestoreFrom: "WarmStart/crio"},
		"linux":       map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"pid": 1}}},
	})
	sandbox, err := crio.Crictl("runp", "--runtime", "stasis", podCfg)
	if err != nil {
		t.Fatalf("crictl runp: %v: %s\n%s", err, sandbox, crio.LogTail(10))
	}
	id, err := crio.Crictl("create", sandbox, ctrCfg, podCfg)
	if err != nil {
		t.Fatalf("crictl create: %v: %s\n%s", err, id, crio.LogTail(10))
	}
	if out, err := crio.Crictl("start", id); err != nil {
		t.Fatalf("crictl start (the restore): %v: %s\n%s", err, out, crio.LogTail(10))
	}
	var got []int
	var names []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, _ := crio.Crictl("logs", id)
		got, names = got[:0], names[:0]
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "count" {
				n, _ := strconv.Atoi(f[1])
				got, names = append(got, n), append(names, f[2])
			}
		}
		if len(got) >= 2 {
			break
		}
	}
	last := at[len(at)-1]
	if len(got) < 2 || got[0] == 0 || got[0] < last-2 {
		t.Fatalf("under CRI-O the counter logged %v; under containerd it had reached %d", got, last)
	}
	if names[len(names)-1] != "web-crio" {
		t.Errorf("restored under CRI-O as %q, want the new pod's hostname", names[len(names)-1])
	}
	t.Logf("containerd pod checkpointed at %d, CRI-O container went on from %d", last, got[0])
	node.Client.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{})
}

// startNodeAgent starts an agent for another node of this machine
// (nodeName), with its own node socket, and returns the socket and its
// HTTPS address.
func startNodeAgent(t *testing.T, nodeName string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	cert, key := node.KubeletServing()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(stasisBin, "--root", stasisRoot, "--runroot", stasisRunRoot, "agent", "--listen", addr,
		"--tls-cert", cert, "--tls-key", key, "--kubeconfig", node.Kubeconfig, "--node-name", nodeName,
		"--node-socket", sock, "--signing-key", clusterKey+".key", "--audit-log", filepath.Join(dir, "audit.log"))
	logf, _ := os.Create(filepath.Join(dir, "agent.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
			t.Logf("agent of %s: %s", nodeName, tail(string(b), 15))
		}
	})
	poll(t, 20*time.Second, "agent socket", func() bool { _, err := os.Stat(sock); return err == nil })
	return sock, addr
}
