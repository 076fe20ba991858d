package migrate

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// The source node's agent killed (SIGKILL) while a pod moves, at each
// phase, and started again a few seconds later: whatever the Migration
// then says, exactly one copy of the pod runs, with its state (its count
// goes on from where it was, without a gap).
func TestMigrateSourceAgentKilled(t *testing.T) {
	requireCluster(t)
	for _, at := range []stasisv1.MigrationPhase{stasisv1.MigrationCheckpointing, stasisv1.MigrationRestoring} {
		t.Run(string(at), func(t *testing.T) {
			ns := namespace(t, "agent-killed-"+strings.ToLower(string(at)))
			runCounter(t, ns, "web", "node-a", nil)
			last := waitCount(t, ns, "web", 3)
			m := &stasisv1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-to-b"},
				Spec: stasisv1.MigrationSpec{PodName: "web", TargetNode: "node-b"}}
			if err := kc.Create(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(time.Minute); m.Status.Phase != at && !m.Status.Phase.Done(); time.Sleep(10 * time.Millisecond) {
				if err := kc.Get(context.Background(), client.ObjectKeyFromObject(m), m); err != nil || time.Now().After(deadline) {
					t.Fatalf("migration never %s: %v %+v", at, err, m.Status)
				}
			}
			killAgent("node-a")
			t.Logf("agent of node-a killed with the migration %s", m.Status.Phase)
			time.Sleep(5 * time.Second)
			if err := restartAgent("node-a"); err != nil {
				t.Fatalf("restart the agent of node-a: %v", err)
			}
			for deadline := time.Now().Add(4 * time.Minute); !m.Status.Phase.Done(); time.Sleep(100 * time.Millisecond) {
				if err := kc.Get(context.Background(), client.ObjectKeyFromObject(m), m); err != nil || time.Now().After(deadline) {
					t.Fatalf("migration did not end: %v %+v\n%s", err, m.Status, logTails())
				}
			}
			t.Logf("migration: %s %s: %s", m.Status.Phase, m.Status.Reason, m.Status.Message)
			oneCopyWithState(t, ns, "web", last)
		})
	}
}

// killAgent kills the agent of a node at once, as a crash would.
func killAgent(name string) {
	if a := agents[name]; a != nil {
		a.Process.Signal(syscall.SIGKILL)
		a.Wait()
		delete(agents, name)
	}
}

// oneCopyWithState checks that pod name runs once, on either node, and
// counts on from its state: restored, from past last; resumed where it
// was, from 0 through last; either way without a gap, and still counting.
func oneCopyWithState(t *testing.T, ns, name string, last int) {
	t.Helper()
	pod := waitRunning(t, ns, name, "")
	list, err := cluster.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.Name != name && p.Status.Phase == corev1.PodRunning {
			t.Errorf("pod %s runs beside %s", p.Name, name)
		}
	}
	now := waitCount(t, ns, name, last+2)
	all, err := counts(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(all); i++ {
		if all[i] != all[i-1]+1 {
			t.Fatalf("pod %s on %s: count went %d → %d (%v)", name, pod.Spec.NodeName, all[i-1], all[i], all)
		}
	}
	if all[0] != 0 && all[0] < last {
		t.Fatalf("pod %s on %s counted from %d: neither resumed nor restored from past %d (%v)", name, pod.Spec.NodeName, all[0], last, all)
	}
	t.Logf("pod %s runs on %s, counting from %d to %d", name, pod.Spec.NodeName, all[0], now)
}
