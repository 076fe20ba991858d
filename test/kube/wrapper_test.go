package kube

import (
	"testing"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// A container checkpointed through the kubelet is restored, by the
// RuntimeClass "stasis", in a new pod of another namespace: the counter
// goes on from where it was, under the new pod's hostname. containerd 2.4
// has no restore of its own, so this is stasis-runc's doing. The
// kubelet's archive is signed by no one: it restores because an
// administrator signed it with a key the node trusts, and a WarmStart of
// the pod's namespace names it.
func TestRuntimeClassRestoresKubeletCheckpoint(t *testing.T) {
	shop, qa := namespace(t, "shop"), namespace(t, "qa")
	createPod(t, counterPod(shop, "web"))
	waitReady(t, shop, "web")
	waitCount(t, shop, "web", "counter", 4)

	archive := kubeletCheckpoint(t, shop, "web", "counter")
	before, _ := counts(t, shop, "web", "counter")
	stasis(t, "image", "build", archive, "localhost/ckpt/web:1")
	stasis(t, "image", "sign", "localhost/ckpt/web:1", "--key", trustedKey+".key")
	warmStart(t, qa, "kubelet", stasisv1.WarmStartSpec{Images: map[string]string{"counter": "localhost/ckpt/web:1"}})

	p := counterPod(qa, "web-copy")
	p.Annotations = map[string]string{stasisv1.AnnotationRestoreFrom: "WarmStart/kubelet"}
	rc := "stasis"
	p.Spec.RuntimeClassName = &rc
	createPod(t, p)
	took := waitReady(t, qa, "web-copy")
	t.Logf("restored pod Ready in %s", took)
	last := before[len(before)-1]
	waitCount(t, qa, "web-copy", "counter", last+2)
	got, hosts := counts(t, qa, "web-copy", "counter")
	if got[0] == 0 || got[0] < last-1 {
		t.Fatalf("restored counter started at %d; the checkpointed one had reached %d", got[0], last)
	}
	if h := hosts[len(hosts)-1]; h != "web-copy" {
		t.Errorf("restored container calls itself %q, want the new pod's name web-copy", h)
	}
	// The source pod was left running by the kubelet's checkpoint.
	waitCount(t, shop, "web", "counter", last+2)
}
