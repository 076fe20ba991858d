package migrate

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/internal/plugin"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/test/kubenode"
)

// kubectl stasis drain node-a: the node is cordoned, a bare pod and a
// Deployment's pod migrate to node-b with their memory, a Deployment's pod
// marked never to migrate is evicted (and started again on node-b by its
// ReplicaSet), and a bare pod marked so is refused without --force, which
// fails the drain and leaves that pod running.
func TestDrain(t *testing.T) {
	requireCluster(t)
	ns := namespace(t, "drain")
	ctx := context.Background()
	t.Cleanup(func() { setUnschedulable(t, "node-a", false) })
	// Everything starts on node-a: node-b takes no pods meanwhile.
	setUnschedulable(t, "node-b", true)
	never := map[string]string{policy.Migrate: policy.Never}
	runCounter(t, ns, "solo", "node-a", nil)
	runCounter(t, ns, "keep", "node-a", never)
	deploy(t, ns, "web", nil)
	deploy(t, ns, "stay", never)
	web, stay := runningOf(t, ns, "web"), runningOf(t, ns, "stay")
	setUnschedulable(t, "node-b", false)
	lastSolo, lastWeb := waitCount(t, ns, "solo", 2), waitCount(t, ns, web.Name, 2)

	var out bytes.Buffer
	cmd := plugin.New(&out)
	cmd.SetArgs([]string{"--kubeconfig", cluster.Kubeconfig, "drain", "node-a", "--timeout", "3m"})
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	err := cmd.ExecuteContext(ctx)
	t.Logf("kubectl stasis drain node-a:\n%s", out.String())
	if err == nil || !strings.Contains(err.Error(), "pod drain/keep cannot migrate") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("drain: %v, want it to refuse pod keep without --force", err)
	}
	var n corev1.Node
	if err := kc.Get(ctx, types.NamespacedName{Name: "node-a"}, &n); err != nil || !n.Spec.Unschedulable {
		t.Fatalf("node-a not cordoned: %v", err)
	}
	checkMoved(t, ns, "solo", "node-b", lastSolo)
	moved := runningOf(t, ns, "web")
	if moved.Spec.NodeName != "node-b" || moved.UID == web.UID {
		t.Fatalf("the Deployment's pod %s is on %s, not moved to node-b", moved.Name, moved.Spec.NodeName)
	}
	checkMoved(t, ns, moved.Name, "node-b", lastWeb)
	started := runningOf(t, ns, "stay")
	if started.UID == stay.UID || started.Spec.NodeName != "node-b" {
		t.Fatalf("the opted-out Deployment's pod was not evicted and started on node-b: %s on %s", started.Name, started.Spec.NodeName)
	}
	if _, ok := started.Labels[stasisv1.LabelRestore]; ok {
		t.Fatalf("the opted-out pod %s was restored, not started anew", started.Name)
	}
	if keep := getPod(t, ns, "keep"); keep.Spec.NodeName != "node-a" || keep.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod keep: %s on %s, want it left running on node-a", keep.Status.Phase, keep.Spec.NodeName)
	}
}

func setUnschedulable(t *testing.T, node string, cordoned bool) {
	t.Helper()
	var n corev1.Node
	if err := kc.Get(context.Background(), types.NamespacedName{Name: node}, &n); err != nil {
		t.Fatal(err)
	}
	n.Spec.Unschedulable = cordoned
	if err := kc.Update(context.Background(), &n); err != nil {
		t.Fatal(err)
	}
}

// deploy creates a one-replica Deployment of the counter whose pods carry
// annotations.
func deploy(t *testing.T, ns, name string, annotations map[string]string) {
	t.Helper()
	one := int32(1)
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{Name: "counter",
					Image: kubenode.BusyboxImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sh", "-c", counterScript}}}}}}}
	if _, err := cluster.Client.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runningOf waits until exactly one pod of app=name runs, not being
// deleted, and returns it.
func runningOf(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var running []corev1.Pod
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		list, err := cluster.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			t.Fatal(err)
		}
		running = running[:0]
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				running = append(running, p)
			}
		}
		if len(running) == 1 && len(list.Items) == 1 {
			return &running[0]
		}
	}
	t.Fatalf("pods of %s: %d running, want exactly one", name, len(running))
	return nil
}
