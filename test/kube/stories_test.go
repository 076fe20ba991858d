package kube

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/runtimeclass"
	"github.com/stasis-dev/stasis/pkg/wire"
)

func checkpointPod(t *testing.T, ns, name, pod string, dest *stasisv1.ImageDestination) *stasisv1.Checkpoint {
	t.Helper()
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: stasisv1.CheckpointSpec{PodName: pod, Destination: stasisv1.Destination{Image: dest}}}
	if err := kc.Create(ctx, ck); err != nil {
		t.Fatal(err)
	}
	return mustCheckpoint(t, ns, name)
}

// uptimeScript logs the host's uptime (10 ms resolution) and the one it
// logged before, 50 times a second: the first line a restored container
// logs carries the last moment it ran before the checkpoint.
const uptimeScript = `prev=0; while true; do read up rest < /proc/uptime; echo "tick $up $prev"; prev=$up; usleep 20000; done`

// lastTickBeforeRestore is the uptime a restored container had last
// logged before its checkpoint.
func lastTickBeforeRestore(t *testing.T, ns, pod, container string) float64 {
	t.Helper()
	var out string
	poll(t, 30*time.Second, "ticks of "+container, func() bool {
		b, err := node.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		out = string(b)
		return err == nil && strings.Count(out, "tick ") > 0
	})
	f := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if len(f) != 3 {
		t.Fatalf("%s: first line %q", container, f)
	}
	v, err := strconv.ParseFloat(f[2], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A two-container pod is frozen as a whole: both containers restore to the
// same moment, although the kubelet dumps them one after the other.
func TestTwoContainerPodRestoresToOneMoment(t *testing.T) {
	ns := namespace(t, "two")
	p := counterPod(ns, "pair", "a", "b")
	for i := range p.Spec.Containers {
		p.Spec.Containers[i].Command = []string{"sh", "-c", uptimeScript}
	}
	createPod(t, p)
	waitReady(t, ns, "pair")
	time.Sleep(time.Second)
	checkpointPod(t, ns, "pair-1", "pair", nil)
	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pair-copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "pair-1"}, PodName: "pair-copy"}}); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, ns, "pair-copy")
	a, b := lastTickBeforeRestore(t, ns, "pair-copy", "a"), lastTickBeforeRestore(t, ns, "pair-copy", "b")
	// Dumped one by one without a common freeze, the second container
	// would run on for the first's whole dump (0.3 s and more here).
	if d := a - b; d > 0.12 || d < -0.12 {
		t.Fatalf("containers restored to moments %.2f s apart (a %.2f, b %.2f)", d, a, b)
	}
	t.Logf("containers restored to moments %.2f s apart", a-b)
}

// A Deployment whose template names a WarmStart starts every replica by
// restoring its checkpoint, each with its own identity.
func TestDeploymentWarmStartsEveryReplica(t *testing.T) {
	ns := namespace(t, "warm")
	createPod(t, counterPod(ns, "seed"))
	waitReady(t, ns, "seed")
	waitCount(t, ns, "seed", "counter", 5)
	ck := checkpointPod(t, ns, "seed-1", "seed", nil)
	seedAt, _ := counts(t, ns, "seed", "counter")

	warmStart(t, ns, "seed", stasisv1.WarmStartSpec{CheckpointRef: &stasisv1.CheckpointReference{Name: ck.Name}})
	d := warmDeployment(ns, "web", "seed")
	if _, err := node.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, ns, "web", 1)
	scale(t, ns, "web", 3)
	pods := waitReplicas(t, ns, "web", 3)
	for _, p := range pods {
		waitCount(t, ns, p.Name, "counter", 1)
		got, hosts := counts(t, ns, p.Name, "counter")
		if len(got) == 0 || got[0] < seedAt[len(seedAt)-1]-2 {
			t.Errorf("replica %s started counting at %v; the checkpoint had reached %d", p.Name, got, seedAt[len(seedAt)-1])
		}
		if len(hosts) > 0 && hosts[len(hosts)-1] != p.Name {
			t.Errorf("replica %s calls itself %s", p.Name, hosts[len(hosts)-1])
		}
	}
}

// warmStart grants namespace ns a checkpoint for its pods' warm starts.
func warmStart(t *testing.T, ns, name string, spec stasisv1.WarmStartSpec) {
	t.Helper()
	if err := kc.Create(ctx, &stasisv1.WarmStart{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
}

// warmDeployment is a Deployment of the counter whose pods start from the
// WarmStart grant.
func warmDeployment(ns, name, grant string) *appsv1.Deployment {
	one := int32(1)
	rc := "stasis"
	grace := int64(1)
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name},
					Annotations: map[string]string{stasisv1.AnnotationRestoreFrom: "WarmStart/" + grant}},
				Spec: corev1.PodSpec{RuntimeClassName: &rc, TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{counterContainer("counter")}}}}}
}

func scale(t *testing.T, ns, name string, n int32) {
	t.Helper()
	// The deployment controller updates it too: retry on conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := node.Client.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Spec.Replicas = n
		_, err = node.Client.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitReplicas waits for n Ready pods of a Deployment and returns them.
func waitReplicas(t *testing.T, ns, app string, n int) []corev1.Pod {
	t.Helper()
	var ready []corev1.Pod
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		l, err := node.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			continue
		}
		ready = ready[:0]
		for _, p := range l.Items {
			for _, cs := range p.Status.ContainerStatuses {
				if term := cs.LastTerminationState.Terminated; term != nil && term.Reason == "StartError" {
					t.Fatalf("replica %s failed to start: %s", p.Name, term.Message)
				}
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
					ready = append(ready, p)
				}
			}
		}
		if len(ready) >= n {
			return ready
		}
	}
	t.Fatalf("deployment %s/%s: %d of %d replicas Ready", ns, app, len(ready), n)
	return nil
}

// startRegistry runs Debian's docker-registry on plain HTTP.
func startRegistry(t *testing.T) string {
	t.Helper()
	requireNode(t)
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry is needed: %v", err)
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s/data}}\nhttp: {addr: %s}\n", dir, addr)), 0o600)
	cmd := exec.Command(bin, "serve", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	poll(t, 20*time.Second, "registry", func() bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	return addr
}

// Through a registry: the Checkpoint pushes, the status names the image
// by digest, and both a Restore and a warm-started Deployment pull it.
func TestCheckpointThroughRegistry(t *testing.T) {
	reg := startRegistry(t)
	ns := namespace(t, "reg")
	createPod(t, counterPod(ns, "web"))
	waitReady(t, ns, "web")
	waitCount(t, ns, "web", "counter", 3)
	ck := checkpointPod(t, ns, "web-1", "web", &stasisv1.ImageDestination{Repository: reg + "/ckpt/web", Insecure: true})
	at, _ := counts(t, ns, "web", "counter")
	ref := ck.Status.Containers[0].Image
	if !strings.HasPrefix(ref, reg+"/ckpt/web@sha256:") {
		t.Fatalf("checkpoint image %q is not in the registry by digest", ref)
	}
	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "web-1"}, PodName: "copy"}}); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, ns, "copy")
	if p, _ := node.Client.CoreV1().Pods(ns).Get(ctx, "copy", metav1.GetOptions{}); p.Annotations[stasisv1.AnnotationRestoreFrom] != "Restore/copy" {
		t.Fatalf("restored pod's grant is %q, want Restore/copy", p.Annotations[stasisv1.AnnotationRestoreFrom])
	}
	waitCount(t, ns, "copy", "counter", 1)
	got, _ := counts(t, ns, "copy", "counter")
	if len(got) == 0 || got[0] < at[len(at)-1]-2 {
		t.Fatalf("restored counter started at %v, checkpoint at %d", got, at[len(at)-1])
	}
	// The image by reference, signed by this cluster for this namespace.
	warmStart(t, ns, "pushed", stasisv1.WarmStartSpec{Images: map[string]string{"counter": ref}})
	if _, err := node.Client.AppsV1().Deployments(ns).Create(ctx, warmDeployment(ns, "warm", "pushed"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	scale(t, ns, "warm", 2)
	waitReplicas(t, ns, "warm", 2)
}

// Only administrators: a ServiceAccount with the built-in "edit" role in
// its namespace can run pods there, but neither checkpoint, nor restore,
// nor grant a warm start, nor name a checkpoint in a pod, nor call an agent.
func TestNonAdminIsRefused(t *testing.T) {
	ns := namespace(t, "dev")
	dev, devCS, token := asServiceAccount(t, ns, "dev", binding{ns, "edit"})
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	forbidden(t, "a developer creating a Checkpoint", "", func() error {
		return dev.Create(ctx, &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "x"},
			Spec: stasisv1.CheckpointSpec{PodName: "web"}}, client.DryRunAll)
	})
	forbidden(t, "a developer creating a Restore", "", func() error {
		return dev.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "x"},
			Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "x"}, PodName: "x"}}, client.DryRunAll)
	})
	forbidden(t, "a developer creating a WarmStart", "", func() error {
		return dev.Create(ctx, &stasisv1.WarmStart{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "x"},
			Spec: stasisv1.WarmStartSpec{Images: map[string]string{"counter": "localhost/stasis/other/secret:counter"}}}, client.DryRunAll)
	})
	p := counterPod(ns, "sneaky")
	p.Annotations = map[string]string{"restore.stasis.dev/counter": "localhost/stasis/other/secret:counter"}
	forbidden(t, "a developer's pod naming a checkpoint", "restore.stasis.dev/counter is not allowed", func() error {
		_, err := devCS.CoreV1().Pods(ns).Create(ctx, p, dry)
		return err
	})
	// At the agent: the API server's token is not for it (401); one for
	// the agent's audience is the developer's, who may not (403).
	agentToken, err := audienceToken(ctx, ns, "dev", wire.Audience(node.Name))
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := rest.HTTPClientFor(rest.AnonymousClientConfig(node.Config))
	for tok, want := range map[string]int{token: http.StatusUnauthorized, agentToken: http.StatusForbidden} {
		req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("https://%s/v1/pods/%s/web/checkpoint", net.JoinHostPort(node.IP, strconv.Itoa(agentPort)), ns),
			strings.NewReader(`{"name":"x","uid":"u"}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("a developer calling the agent: %s, want %d", resp.Status, want)
		}
	}
}

// A Restore of another namespace's Checkpoint needs the verb "restore" on
// checkpoints there, which only stasis-admin has: a viewer of the source
// namespace (who may read the Checkpoint) is refused, an admin of both
// restores, and the pod runs as the target namespace's default service
// account.
func TestCrossNamespaceRestoreNeedsRestoreVerb(t *testing.T) {
	src, dst := namespace(t, "xsrc"), namespace(t, "xdst")
	createPod(t, counterPod(src, "web"))
	waitReady(t, src, "web")
	at := waitCount(t, src, "web", "counter", 2)
	checkpointPod(t, src, "web-1", "web", nil)
	viewer, _, _ := asServiceAccount(t, dst, "viewer", binding{dst, "stasis-admin"}, binding{src, "stasis-viewer"})
	admin, _, _ := asServiceAccount(t, dst, "admin", binding{dst, "stasis-admin"}, binding{src, "stasis-admin"})
	rs := &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: dst, Name: "copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Namespace: src, Name: "web-1"}, PodName: "copy"}}
	var last error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		last = viewer.Create(ctx, rs.DeepCopy())
		if last != nil && strings.Contains(last.Error(), "may not restore checkpoints of namespace "+src) {
			break
		}
		if time.Now().After(deadline) {
			vap, _ := node.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "stasis-restore-checkpoint-access", metav1.GetOptions{})
			t.Fatalf("a viewer's Restore of another namespace's Checkpoint: %v\npolicy status: %+v", last, vap.Status)
		}
	}
	forbidden(t, "a viewer's WarmStart of another namespace's Checkpoint", "may not restore checkpoints of namespace "+src, func() error {
		return viewer.Create(ctx, &stasisv1.WarmStart{ObjectMeta: metav1.ObjectMeta{Namespace: dst, Name: "steal"},
			Spec: stasisv1.WarmStartSpec{CheckpointRef: &stasisv1.CheckpointReference{Namespace: src, Name: "web-1"}}}, client.DryRunAll)
	})
	restoreCounter(t, admin, dst, "copy", rs.Spec.CheckpointRef, at)
	p, err := node.Client.CoreV1().Pods(dst).Get(ctx, "copy", metav1.GetOptions{})
	if err != nil || p.Spec.ServiceAccountName != "default" {
		t.Fatalf("restored pod's service account: %v %q", err, p.Spec.ServiceAccountName)
	}
}

// forbidden waits for f to be refused with 403 (and the message, if any):
// admission policies take effect a moment after they are created.
func forbidden(t *testing.T, what, message string, f func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = f(); apierrors.IsForbidden(err) && strings.Contains(err.Error(), message) {
			return
		}
	}
	t.Errorf("%s: %v, want 403 Forbidden", what, err)
}

func roleBindingKind(ns, sa, kind, role string) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa + "-" + role},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: kind, Name: role},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}}}
}

// An opted-out pod is refused with a clear status and keeps running.
func TestOptedOutPodIsRefused(t *testing.T) {
	ns := namespace(t, "optout")
	p := counterPod(ns, "secret")
	p.Annotations = map[string]string{"stasis.dev/checkpoint": "never"}
	createPod(t, p)
	waitReady(t, ns, "secret")
	at := waitCount(t, ns, "secret", "counter", 2)
	if err := kc.Create(ctx, &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "no"},
		Spec: stasisv1.CheckpointSpec{PodName: "secret"}}); err != nil {
		t.Fatal(err)
	}
	ck, err := waitCheckpoint(ns, "no")
	if err != nil || ck.Status.Phase != stasisv1.PhaseFailed || ck.Status.Reason != "OptedOut" || !strings.Contains(ck.Status.Message, "never") {
		t.Fatalf("opted-out pod: %v %+v", err, ck.Status)
	}
	waitCount(t, ns, "secret", "counter", at+2)
	if imgs := stasis(t, "images"); strings.Contains(imgs, "/optout/") {
		t.Fatalf("a checkpoint image of the opted-out pod exists:\n%s", imgs)
	}
}

// A controller that died in the middle of a checkpoint (the status says
// Running) finishes it when it comes back; the agent finds the
// checkpoint it took already, so asking twice takes one checkpoint.
func TestControllerRestartFinishesCheckpoint(t *testing.T) {
	ns := namespace(t, "restart")
	createPod(t, counterPod(ns, "web"))
	waitReady(t, ns, "web")
	stopController(t)
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-1"}, Spec: stasisv1.CheckpointSpec{PodName: "web"}}
	if err := kc.Create(ctx, ck); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	ck.Status = stasisv1.CheckpointStatus{Phase: stasisv1.PhaseRunning, StartTime: &now, NodeName: node.Name}
	if err := kc.Status().Update(ctx, ck); err != nil {
		t.Fatal(err)
	}
	if err := startController(controllerBin); err != nil {
		t.Fatal(err)
	}
	done := mustCheckpoint(t, ns, "web-1")
	if done.Status.PodTemplate == nil || len(done.Status.Containers) != 1 {
		t.Fatalf("finished checkpoint lacks its record: %+v", done.Status)
	}
	images := strings.Count(stasis(t, "images"), "localhost/stasis/"+ns+"/web-1-")
	if images != 1 {
		t.Fatalf("%d checkpoint images of one Checkpoint, want 1", images)
	}
}

func stopController(t *testing.T) {
	t.Helper()
	controller.Process.Signal(os.Interrupt)
	controller.Wait()
	t.Cleanup(func() {
		if controller.ProcessState != nil {
			startController(controllerBin)
		}
	})
}

// A Restore whose checkpoint image is gone from the node fails with the
// runtime's reason in its status, and the source pod is untouched.
func TestRestoreOfVanishedImageFailsClearly(t *testing.T) {
	ns := namespace(t, "vanished")
	createPod(t, counterPod(ns, "web"))
	waitReady(t, ns, "web")
	at := waitCount(t, ns, "web", "counter", 1)
	ck := checkpointPod(t, ns, "web-1", "web", nil)
	stasis(t, "rmi", ck.Status.Containers[0].Image)
	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "web-1"}, PodName: "copy"}}); err != nil {
		t.Fatal(err)
	}
	rs, err := waitRestore(ns, "copy")
	if err != nil || rs.Status.Phase != stasisv1.PhaseFailed || rs.Status.Reason != "RestoreFailed" ||
		!strings.Contains(rs.Status.Message, ck.Status.Containers[0].Image) {
		t.Fatalf("restore of a vanished image: %v %+v", err, rs.Status)
	}
	t.Logf("status says: %s", rs.Status.Message)
	waitCount(t, ns, "web", "counter", at+2)
}

// A Restore with lazy pages: the container runs before its memory is
// back; CRIU's restore log shows the userfaultfd registration.
func TestLazyPagesRestore(t *testing.T) {
	ns := namespace(t, "lazy")
	createPod(t, counterPod(ns, "web"))
	waitReady(t, ns, "web")
	at := waitCount(t, ns, "web", "counter", 2)
	checkpointPod(t, ns, "web-1", "web", nil)
	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "web-1"}, PodName: "copy", LazyPages: true}}); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, ns, "copy")
	got := waitRestoredFrom(t, ns, "copy", at)
	rec := restoreRecord(t, ns, "copy")
	if !rec.LazyPages {
		t.Fatalf("the restore was not lazy: %+v", rec)
	}
	t.Logf("stasis-runc: %+v", rec)
	t.Logf("lazily restored counter went on to %d", got)
}

// tcpScript serves HTTP on 8080 and holds an established loopback TCP
// connection on port 9000 (0x2328) between two nc processes; every second
// it logs how many sockets of that connection the kernel has established.
const tcpScript = `mkdir -p /www && echo served > /www/index.html && httpd -p 8080 -h /www
sleep 100000 | nc -l -p 9000 > /dev/null &
sleep 1
sleep 100000 | nc 127.0.0.1 9000 &
while true; do echo "established $(cat /proc/net/tcp /proc/net/tcp6 | grep -cE ':2328 [0-9A-F]+:[0-9A-F]+ 01 |:[0-9A-F]+ [0-9A-F]+:2328 01 ')"; sleep 1; done`

// restoreRecord is what stasis-runc recorded of the restore of the pod's
// first container.
func restoreRecord(t *testing.T, ns, pod string) runtimeclass.Record {
	t.Helper()
	p, err := node.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, id, _ := strings.Cut(p.Status.ContainerStatuses[0].ContainerID, "://")
	b, err := os.ReadFile(filepath.Join(node.Run, "containerd", "io.containerd.runtime.v2.task", "k8s.io", id, runtimeclass.RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	var rec runtimeclass.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return rec
}

// established is the last count a tcpScript pod logged.
func established(t *testing.T, ns, pod string) int {
	t.Helper()
	b, _ := node.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
	n := -1
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "established" {
			n, _ = strconv.Atoi(f[1])
		}
	}
	return n
}

// Across a restore, a listening socket goes on serving at the new pod's
// address; an established connection is closed (the pod's address
// changed), which its processes see.
func TestTCPAcrossRestore(t *testing.T) {
	ns := namespace(t, "tcp")
	p := counterPod(ns, "web")
	p.Spec.Containers[0].Command = []string{"sh", "-c", tcpScript}
	createPod(t, p)
	waitReady(t, ns, "web")
	for deadline := time.Now().Add(20 * time.Second); established(t, ns, "web") != 2; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			b, _ := node.Client.CoreV1().Pods(ns).GetLogs("web", &corev1.PodLogOptions{}).DoRaw(ctx)
			t.Fatalf("no established connection in the source pod:\n%s", tail(string(b), 5))
		}
	}
	checkpointPod(t, ns, "web-1", "web", nil)
	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "web-1"}, PodName: "copy"}}); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, ns, "copy")
	cp, err := node.Client.CoreV1().Pods(ns).Get(ctx, "copy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, _ := node.Client.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
	if cp.Status.PodIP == "" || cp.Status.PodIP == src.Status.PodIP {
		t.Fatalf("restored pod's IP %q, source's %q", cp.Status.PodIP, src.Status.PodIP)
	}
	var body string
	poll(t, 10*time.Second, "HTTP at the restored pod's address", func() bool {
		resp, err := http.Get("http://" + net.JoinHostPort(cp.Status.PodIP, "8080") + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		body = string(b[:n])
		return resp.StatusCode == 200
	})
	if strings.TrimSpace(body) != "served" {
		t.Fatalf("restored httpd answered %q", body)
	}
	poll(t, 10*time.Second, "the restored pod's count of established sockets", func() bool { return established(t, ns, "copy") == 0 })
	// In the source pod the connection is still up.
	if n := established(t, ns, "web"); n != 2 {
		t.Fatalf("the source pod has %d established sockets, want both ends (2)", n)
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
