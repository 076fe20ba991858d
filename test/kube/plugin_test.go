package kube

import (
	"os/exec"
	"strings"
	"testing"
)

func plugin(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(pluginBin, append([]string{"--kubeconfig", node.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl stasis %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// The kubectl plugin drives the same story: checkpoint, list, inspect,
// restore into another namespace, and says why when it cannot.
func TestKubectlPlugin(t *testing.T) {
	src, dst := namespace(t, "plug-src"), namespace(t, "plug-dst")
	createPod(t, counterPod(src, "web"))
	waitReady(t, src, "web")
	at := waitCount(t, src, "web", "counter", 2)

	out := plugin(t, "checkpoint", "pod/web", "-n", src, "--name", "web-1")
	if !strings.Contains(out, "counter: localhost/stasis/"+src+"/web-1-") {
		t.Fatalf("checkpoint output:\n%s", out)
	}
	if out := plugin(t, "list", "-n", src); !strings.Contains(out, "Checkpoint  web-1") || !strings.Contains(out, "Succeeded") {
		t.Fatalf("list:\n%s", out)
	}
	if out := plugin(t, "inspect", "web-1", "-n", src); !strings.Contains(out, "digest: sha256:") || !strings.Contains(out, "podTemplate:") {
		t.Fatalf("inspect:\n%s", out)
	}
	if out := plugin(t, "restore", "web-1", "--pod", "web-copy", "-n", dst, "--from-namespace", src); !strings.Contains(out, "pod/web-copy is Ready") {
		t.Fatalf("restore:\n%s", out)
	}
	waitCount(t, dst, "web-copy", "counter", at+1)

	out2, err := exec.Command(pluginBin, "--kubeconfig", node.Kubeconfig, "checkpoint", "pod/nope", "-n", src).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "PodNotFound") {
		t.Fatalf("checkpoint of a missing pod: %v\n%s", err, out2)
	}
	if out, err := exec.Command(pluginBin, "checkpoint", "web").CombinedOutput(); err == nil || !strings.Contains(string(out), "pod/NAME") {
		t.Fatalf("a bare name: %v\n%s", err, out)
	}
}
