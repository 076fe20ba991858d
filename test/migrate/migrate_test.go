package migrate

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/test/kubenode"
)

// counterScript counts once a second into its log.
const counterScript = `i=0; while true; do echo "count $i"; i=$((i+1)); sleep 1; done`

// A bare counter pod moves to node-b with its memory (it counts on from
// where it was, at an address of node-b's pods), and back to node-a; the
// Migration reports the move.
func TestMigrateCounterThereAndBack(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "there-and-back")
	runCounter(t, ns, "web", "node-a", nil)
	last := waitCount(t, ns, "web", 3)
	succeeded := `stasis_migrations_total{phase="Succeeded",reason=""}`
	downtimes := `stasis_migration_downtime_seconds_count{lazy_pages="false",mode="Offline"}`
	before := scrape(t, succeeded, downtimes)

	m := migrate(t, ns, "web-to-b", "web", "node-b")
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		t.Fatalf("migration: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	if m.Status.SourceNode != "node-a" || m.Status.TargetNode != "node-b" || m.Status.BytesMoved <= 0 || m.Status.DowntimeMillis <= 0 {
		t.Fatalf("migration status: %+v", m.Status)
	}
	t.Logf("node-a → node-b: down %d ms, %d bytes moved", m.Status.DowntimeMillis, m.Status.BytesMoved)
	checkMoved(t, ns, "web", "node-b", last)

	last = waitCount(t, ns, "web", last+2)
	back := migrate(t, ns, "web-to-a", "web", "")
	if back.Status.Phase != stasisv1.MigrationSucceeded || back.Status.TargetNode != "node-a" {
		t.Fatalf("migration back: %s to %q %s: %s", back.Status.Phase, back.Status.TargetNode, back.Status.Reason, back.Status.Message)
	}
	t.Logf("node-b → node-a: down %d ms, %d bytes moved", back.Status.DowntimeMillis, back.Status.BytesMoved)
	checkMoved(t, ns, "web", "node-a", last)
	// The controller's metrics count both.
	after := scrape(t, succeeded, downtimes)
	for _, name := range []string{succeeded, downtimes} {
		if after[name]-before[name] != 2 {
			t.Errorf("%s went from %v to %v, want 2 more", name, before[name], after[name])
		}
	}
}

// scrape reads the named series (name{label="value",...}, labels in
// order) from the controller's metrics endpoint; a missing one is 0.
func scrape(t *testing.T, series ...string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + controllerMetrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		for _, s := range series {
			if v, ok := strings.CutPrefix(line, s+" "); ok {
				out[s], _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	return out
}

// A pod CRI-O started (with CRI-O's own mounts, /run/.containerenv among
// them) moves to the containerd node.
func TestMigrateFromCRIO(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "from-crio")
	runCounter(t, ns, "web", "node-b", nil)
	last := waitCount(t, ns, "web", 2)
	m := migrate(t, ns, "web-to-a", "web", "node-a")
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		t.Fatalf("migration: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	checkMoved(t, ns, "web", "node-a", last)
}

// With lazy pages the pod starts on node-b before its memory is there:
// memhog, which reads its memory as it ticks, ticks on, its pages read
// from node-a's store through node-a's agent.
func TestMigrateLazy(t *testing.T) {
	requireCluster(t)
	importMemhog(t)
	ns := namespace(t, "lazy")
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hog", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: "node-a", TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "app", Image: memhogImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/memhog", "64"}}}}}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "hog", "node-a")
	waitTicking(t, ns, "hog")
	m := migrateWith(t, ns, "hog-to-b", stasisv1.MigrationSpec{PodName: "hog", TargetNode: "node-b", LazyPages: true})
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		t.Fatalf("migration: %s %s: %s\n%s", m.Status.Phase, m.Status.Reason, m.Status.Message, logTails())
	}
	waitRunning(t, ns, "hog", "node-b")
	first := firstTick(t, ns, "hog")
	// Ticking on for 2 s more reads 100 pages spread over the 64 MiB.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		b, _ := cluster.Client.CoreV1().Pods(ns).GetLogs("hog", &corev1.PodLogOptions{Timestamps: true, TailLines: ptr(int64(1))}).DoRaw(context.Background())
		if ts, ok := tickTime(strings.TrimSpace(string(b))); ok && ts.Sub(first) > 2*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("memhog stopped ticking on node-b: %s\n%s", b, logTails())
		}
	}
	var rs stasisv1.Restore
	if err := kc.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: m.Status.Restore}, &rs); err != nil || !rs.Spec.LazyPages {
		t.Fatalf("the migration's Restore is not lazy: %v %+v", err, rs.Spec)
	}
}

// A pod marked never to migrate is refused, whoever asks, and counts on
// where it is, thawed.
func TestMigrateOptedOutIsRefused(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "opted-out")
	runCounter(t, ns, "web", "node-a", map[string]string{policy.Migrate: policy.Never})
	at := waitCount(t, ns, "web", 1)
	m := migrate(t, ns, "web-to-b", "web", "node-b")
	if m.Status.Phase != stasisv1.MigrationFailed || m.Status.Reason != "OptedOut" {
		t.Fatalf("migration of an opted-out pod: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	waitCount(t, ns, "web", at+2)
	pod := getPod(t, ns, "web")
	if pod.Spec.NodeName != "node-a" {
		t.Fatalf("the opted-out pod is on %s", pod.Spec.NodeName)
	}
}

// A restore on the target that fails (its agent is down, so no grant is
// resolved there) is followed by one on the source node: the pod runs on
// node-a again, from its checkpoint, and the Migration says so.
func TestMigrateRollsBackWhenTheTargetFails(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "rollback")
	runCounter(t, ns, "web", "node-a", nil)
	last := waitCount(t, ns, "web", 2)
	stopAgent("node-b")
	defer func() {
		if err := restartAgent("node-b"); err != nil {
			t.Fatalf("restart the agent of node-b: %v", err)
		}
	}()
	m := migrate(t, ns, "web-to-b", "web", "node-b")
	if m.Status.Phase != stasisv1.MigrationFailed || m.Status.Reason != "RestoreFailed" ||
		!strings.Contains(m.Status.Message, "runs again on node node-a") {
		t.Fatalf("migration to a node that cannot restore: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	checkMoved(t, ns, "web", "node-a", last)
}

func namespace(t *testing.T, name string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// A namespace's default ServiceAccount comes a moment after it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := cluster.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return name
		} else if time.Now().After(deadline) {
			t.Fatalf("namespace %s has no default ServiceAccount: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runCounter runs a counter pod on node and waits until it runs.
func runCounter(t *testing.T, ns, name, node string, annotations map[string]string) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: annotations},
		Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "counter", Image: kubenode.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", counterScript}}}}}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, name, "")
}

// waitRunning waits until the pod runs (on node, when given), ready.
func waitRunning(t *testing.T, ns, name, node string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	var err error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		pod, err = cluster.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && pod.Status.Phase == corev1.PodRunning && (node == "" || pod.Spec.NodeName == node) {
			return pod
		}
	}
	t.Fatalf("pod %s/%s not running (on %q): %v %+v", ns, name, node, err, pod)
	return nil
}

func getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	pod, err := cluster.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// counts are the counter values the pod's container "counter" logged, in
// order.
func counts(ns, pod string) ([]int, error) { return countsIn(ns, pod, "counter") }

func countsIn(ns, pod, container string) ([]int, error) {
	b, err := cluster.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(context.Background())
	if err != nil {
		return nil, err
	}
	var out []int
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "count "); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				out = append(out, n)
			}
		}
	}
	return out, nil
}

// waitCount waits until the pod has logged at least n and returns the
// last value it logged.
func waitCount(t *testing.T, ns, pod string, n int) int {
	t.Helper()
	var got []int
	var err error
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got, err = counts(ns, pod); err == nil && len(got) > 0 && got[len(got)-1] >= n {
			return got[len(got)-1]
		}
	}
	t.Fatalf("%s/%s did not count to %d: %v %v", ns, pod, n, got, err)
	return 0
}

// migrate creates a Migration and waits until it ends.
func migrate(t *testing.T, ns, name, pod, target string) *stasisv1.Migration {
	t.Helper()
	return migrateWith(t, ns, name, stasisv1.MigrationSpec{PodName: pod, TargetNode: target})
}

func migrateWith(t *testing.T, ns, name string, spec stasisv1.MigrationSpec) *stasisv1.Migration {
	t.Helper()
	m := &stasisv1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	if err := kc.Create(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(4 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := kc.Get(context.Background(), client.ObjectKeyFromObject(m), m); err == nil && m.Status.Phase.Done() {
			return m
		}
	}
	t.Fatalf("migration %s/%s did not end: %+v\n%s", ns, name, m.Status, logTails())
	return nil
}

// checkMoved checks that the pod runs on node at an address of node's
// pod subnet and counts on from its checkpoint: its first value is past
// last (which it had logged before it moved), not 0, and it counts on.
func checkMoved(t *testing.T, ns, name, node string, last int) {
	t.Helper()
	pod := waitRunning(t, ns, name, node)
	_, subnet, err := net.ParseCIDR(cluster.Node(node).PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(pod.Status.PodIP); ip == nil || !subnet.Contains(ip) {
		t.Fatalf("pod %s on %s has address %q, not one of %s", name, node, pod.Status.PodIP, subnet)
	}
	waitCount(t, ns, name, last+2)
	all, err := counts(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if all[0] < last {
		t.Fatalf("pod %s on %s counted from %d, not from past %d: it was not restored (%v)", name, node, all[0], last, all)
	}
	for i := 1; i < len(all); i++ {
		if all[i] != all[i-1]+1 {
			t.Fatalf("pod %s on %s: count went %d → %d (%v)", name, node, all[i-1], all[i], all)
		}
	}
	fmt.Printf("pod %s/%s on %s at %s counts on from %d\n", ns, name, node, pod.Status.PodIP, all[0])
}

// A Deployment's pod moves to the other node: its copy, made beside the
// frozen source, joins the ReplicaSet once Ready and counts on; the
// ReplicaSet never starts a replica of its own and never has fewer than
// its replicas (watched, not sampled).
func TestMigrateDeploymentPod(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "deployment")
	ctx := context.Background()
	replicas := int32(2)
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{Name: "counter",
					Image: kubenode.BusyboxImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sh", "-c", counterScript}}}}}}}
	if _, err := cluster.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	var listed string // the list's resource version, which the watch starts from
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		list, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		listed, pods = list.ResourceVersion, pods[:0]
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				pods = append(pods, p)
			}
		}
		if len(pods) == int(replicas) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment web: %d of %d pods running", len(pods), replicas)
		}
	}
	src := pods[0]
	target := "node-a"
	if src.Spec.NodeName == "node-a" {
		target = "node-b"
	}
	last := waitCount(t, ns, src.Name, 2)

	w, err := cluster.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: "app=web", ResourceVersion: listed})
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan podCount)
	go countOwned(w.ResultChan(), []string{pods[0].Name, pods[1].Name}, watched)
	m := migrate(t, ns, "move-one", src.Name, target)
	w.Stop()
	seen := <-watched
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		t.Fatalf("migration: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	t.Logf("%s → %s on %s: down %d ms", src.Name, m.Status.TargetPod, target, m.Status.DowntimeMillis)
	checkMoved(t, ns, m.Status.TargetPod, target, last)
	moved := getPod(t, ns, m.Status.TargetPod)
	if o := metav1.GetControllerOf(moved); o == nil || o.Kind != "ReplicaSet" || moved.Labels["pod-template-hash"] != src.Labels["pod-template-hash"] {
		t.Fatalf("pod %s is not the ReplicaSet's: owner %+v, labels %v", moved.Name, o, moved.Labels)
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, src.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("source pod %s still there: %v", src.Name, err)
	}
	want := map[string]bool{pods[0].Name: true, pods[1].Name: true, m.Status.TargetPod: true}
	for name := range seen.names {
		if !want[name] {
			t.Errorf("pod %s appeared during the migration: the ReplicaSet started a replica of its own", name)
		}
	}
	if seen.min < int(replicas) {
		t.Errorf("the ReplicaSet had %d pods at one point, fewer than its %d replicas", seen.min, replicas)
	}
	// Once settled, the ReplicaSet still has its two, and makes no third.
	time.Sleep(3 * time.Second)
	list, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != int(replicas) {
		var names []string
		for _, p := range list.Items {
			names = append(names, p.Name)
		}
		t.Fatalf("after the migration the Deployment has pods %v, want %d", names, replicas)
	}
}

// podCount is what a watch of a ReplicaSet's pods saw: every pod name,
// and the fewest pods the ReplicaSet owned, not being deleted, at once.
type podCount struct {
	names map[string]bool
	min   int
}

func countOwned(events <-chan watch.Event, initial []string, out chan<- podCount) {
	owned := map[string]bool{}
	c := podCount{names: map[string]bool{}, min: len(initial)}
	for _, n := range initial {
		owned[n], c.names[n] = true, true
	}
	for ev := range events {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			continue
		}
		c.names[p.Name] = true
		live := ev.Type != watch.Deleted && p.DeletionTimestamp == nil && metav1.GetControllerOf(p) != nil
		if live {
			owned[p.Name] = true
		} else {
			delete(owned, p.Name)
		}
		if len(owned) < c.min {
			c.min = len(owned)
		}
	}
	out <- c
}
