package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

func tailFile(p string, n int) string {
	b, _ := os.ReadFile(p)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func mustCheckpoint(t *testing.T, ns, name string) *stasisv1.Checkpoint {
	t.Helper()
	ck, err := waitCheckpoint(ns, name)
	if err != nil || ck.Status.Phase != stasisv1.PhaseSucceeded {
		t.Fatalf("checkpoint %s/%s: %v %+v\ncontroller:\n%s\nagent:\n%s", ns, name, err, ck.Status,
			tailFile(filepath.Join(stackDir, "controller.log"), 10), tailFile(filepath.Join(stackDir, "agent.log"), 10))
	}
	return ck
}

func mustRestore(t *testing.T, ns, name string) *stasisv1.Restore {
	t.Helper()
	rs, err := waitRestore(ns, name)
	if err != nil || rs.Status.Phase != stasisv1.PhaseSucceeded {
		t.Fatalf("restore %s/%s: %v %+v\ncontroller:\n%s", ns, name, err, rs.Status,
			tailFile(filepath.Join(stackDir, "controller.log"), 10))
	}
	return rs
}

// restoreCounter has c create Restore name of checkpoint ref as pod name
// in ns, waits for it, and checks the counter goes on from at.
func restoreCounter(t *testing.T, c client.Client, ns, name string, ref stasisv1.CheckpointReference, at int) {
	t.Helper()
	if err := c.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: stasisv1.RestoreSpec{CheckpointRef: ref, PodName: name}}); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, ns, name)
	waitRestoredFrom(t, ns, name, at)
}

// The first story: a Checkpoint of a counter pod, a Restore of it
// as a new pod in another namespace, counting on from where it was.
func TestCheckpointThenRestoreInAnotherNamespace(t *testing.T) {
	shop, qa := namespace(t, "ckpt-shop"), namespace(t, "ckpt-qa")
	createPod(t, counterPod(shop, "web"))
	waitReady(t, shop, "web")
	waitCount(t, shop, "web", "counter", 3)

	if err := kc.Create(ctx, &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "web-1"},
		Spec: stasisv1.CheckpointSpec{PodName: "web"}}); err != nil {
		t.Fatal(err)
	}
	ck := mustCheckpoint(t, shop, "web-1")
	before, _ := counts(t, shop, "web", "counter")
	if len(ck.Status.Containers) != 1 || ck.Status.Containers[0].Size == 0 || !strings.HasPrefix(ck.Status.Containers[0].Digest, "sha256:") ||
		ck.Status.NodeName != node.Name || ck.Status.PodTemplate == nil {
		t.Fatalf("checkpoint status incomplete: %+v", ck.Status)
	}

	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: qa, Name: "web-copy"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Namespace: shop, Name: "web-1"}, PodName: "web-copy"}}); err != nil {
		t.Fatal(err)
	}
	rs := mustRestore(t, qa, "web-copy")
	t.Logf("Restore created to pod Ready: %s", rs.Status.CompletionTime.Sub(rs.CreationTimestamp.Time))
	at := before[len(before)-1]
	waitCount(t, qa, "web-copy", "counter", at+2)
	got, hosts := counts(t, qa, "web-copy", "counter")
	if got[0] == 0 || got[0] < at-2 {
		t.Fatalf("restored counter started at %d, the checkpointed pod had logged %d", got[0], at)
	}
	if hosts[len(hosts)-1] != "web-copy" {
		t.Errorf("restored pod calls itself %q", hosts[len(hosts)-1])
	}
}
