package migrate

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/test/kubenode"
)

// A StatefulSet's pod moves under its own name and identity (hostname,
// subdomain), and the StatefulSet takes the copy as its own: while the
// pod moves, its name is held for the copy (config/admission), so the
// StatefulSet never starts a cold pod of that name (watched, not sampled).
func TestMigrateStatefulSetPod(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "statefulset")
	ctx := context.Background()
	labels := map[string]string{"app": "db"}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels}}
	if _, err := cluster.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	ss := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{Replicas: &one, ServiceName: "db", Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{Name: "counter",
					Image: kubenode.BusyboxImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sh", "-c", counterScript}}}}}}}
	if _, err := cluster.Client.AppsV1().StatefulSets(ns).Create(ctx, ss, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	src := waitRunning(t, ns, "db-0", "")
	target := "node-a"
	if src.Spec.NodeName == "node-a" {
		target = "node-b"
	}
	last := waitCount(t, ns, "db-0", 2)

	w, err := cluster.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=db-0",
		ResourceVersion: src.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	created := make(chan []*corev1.Pod)
	go func() {
		var out []*corev1.Pod
		for ev := range w.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type == watch.Added {
				out = append(out, p)
			}
		}
		created <- out
	}()
	m := migrate(t, ns, "move-db", "db-0", target)
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		t.Fatalf("migration: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	t.Logf("db-0 → %s: down %d ms", target, m.Status.DowntimeMillis)
	checkMoved(t, ns, "db-0", target, last)
	// Settled: the StatefulSet has adopted the copy and made no other.
	var moved *corev1.Pod
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		moved = getPod(t, ns, "db-0")
		if o := metav1.GetControllerOf(moved); o != nil && o.Kind == "StatefulSet" && o.Name == "db" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the StatefulSet did not adopt db-0: owners %+v", moved.OwnerReferences)
		}
	}
	time.Sleep(3 * time.Second)
	w.Stop()
	for _, p := range <-created {
		if p.Labels[stasisv1.LabelRestore] != m.Status.Restore {
			t.Errorf("pod db-0 (UID %s, labels %v) was created while it moved, not by its Restore: the StatefulSet started it cold",
				p.UID, p.Labels)
		}
	}
	if now := getPod(t, ns, "db-0"); now.UID != moved.UID || now.Spec.NodeName != target {
		t.Fatalf("db-0 was replaced after the migration (UID %s → %s, node %s)", moved.UID, now.UID, now.Spec.NodeName)
	}
	if moved.Spec.Hostname != "db-0" || moved.Spec.Subdomain != "db" {
		t.Errorf("db-0 lost its identity: hostname %q, subdomain %q", moved.Spec.Hostname, moved.Spec.Subdomain)
	}
}

// A pod of two containers moves with both, checkpointed at one moment:
// each counts on from where it was, and both lost the same number of ticks
// to the move (frozen together, restored together).
func TestMigrateTwoContainers(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "two-containers")
	ctx := context.Background()
	ctr := func(name, from string) corev1.Container {
		return corev1.Container{Name: name, Image: kubenode.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sh", "-c", `i=` + from + `; while true; do echo "count $i"; i=$((i+1)); sleep 1; done`}}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pair", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: "node-a", TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{ctr("a", "0"), ctr("b", "1000")}}}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "pair", "node-a")
	before := map[string]int{}
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		a, _ := countsIn(ns, "pair", "a")
		b, _ := countsIn(ns, "pair", "b")
		if len(a) >= 3 && len(b) >= 3 {
			before["a"], before["b"] = a[len(a)-1], b[len(b)-1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pair did not count: a %v, b %v", a, b)
		}
	}
	m := migrate(t, ns, "move-pair", "pair", "node-b")
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		t.Fatalf("migration: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
	}
	if len(m.Status.SourceContainers) != 2 {
		t.Errorf("migration recorded containers %+v, want a and b", m.Status.SourceContainers)
	}
	waitRunning(t, ns, "pair", "node-b")
	lost := map[string]int{}
	for _, c := range []string{"a", "b"} {
		var got []int
		for deadline := time.Now().Add(60 * time.Second); len(got) < 3; time.Sleep(200 * time.Millisecond) {
			got, _ = countsIn(ns, "pair", c)
			if time.Now().After(deadline) {
				t.Fatalf("container %s on node-b logged %v", c, got)
			}
		}
		if got[0] <= before[c] {
			t.Fatalf("container %s counted from %d on node-b, not past %d: it was not restored (%v)", c, got[0], before[c], got)
		}
		for i := 1; i < len(got); i++ {
			if got[i] != got[i-1]+1 {
				t.Fatalf("container %s on node-b: count went %d → %d (%v)", c, got[i-1], got[i], got)
			}
		}
		lost[c] = got[0] - before[c]
	}
	// Read a moment apart before the move, the two may differ by a tick
	// or two, never by the seconds the move took.
	if d := lost["a"] - lost["b"]; d < -2 || d > 2 {
		t.Errorf("container a went on %d ticks past what was read before the move, b %d: not checkpointed at one moment", lost["a"], lost["b"])
	}
	t.Logf("a %d → +%d, b %d → +%d, down %d ms", before["a"], lost["a"], before["b"], lost["b"], m.Status.DowntimeMillis)
}
