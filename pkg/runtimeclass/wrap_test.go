package runtimeclass

import (
	"testing"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// The command lines containerd's shim and conmon give runc.
func TestParseRuncCommandLines(t *testing.T) {
	inv := parseInvocation([]string{"--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json", "--log-format", "json",
		"--systemd-cgroup", "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--no-pivot", "abc"})
	if inv.command != "create" || inv.global("root") != "/run/containerd/runc/k8s.io" || inv.global("log") != "/b/log.json" {
		t.Fatalf("containerd's create: %+v", inv)
	}
	c, err := parseCreate(inv.args)
	if err != nil || c.bundle != "/b" || c.pidFile != "/b/init.pid" || !c.noPivot || c.id != "abc" {
		t.Fatalf("create flags: %+v %v", c, err)
	}
	inv = parseInvocation([]string{"--root=/run/runc", "--systemd-cgroup", "create", "-b=/x", "--pid-file=/x/pid", "--console-socket", "/s", "id1"})
	c, err = parseCreate(inv.args)
	if err != nil || inv.global("root") != "/run/runc" || c.bundle != "/x" || c.pidFile != "/x/pid" || c.consoleSocket != "/s" || c.id != "id1" {
		t.Fatalf("conmon-style create: %+v %+v %v", inv, c, err)
	}
	if _, err := parseCreate([]string{"--bundle", "/b", "--frobnicate", "x"}); err == nil {
		t.Fatal("an unknown create flag was accepted: the wrapper must then pass the call to runc untouched")
	}
	if inv := parseInvocation([]string{"--version"}); inv.command != "" {
		t.Fatalf("--version has no subcommand, got %q", inv.command)
	}
}

// The pod, container and grant of a container, as containerd and CRI-O
// record them; a sandbox is no container to restore; any other
// restore.stasis.dev/ annotation is what a pod must never use.
func TestPodOfEitherRuntime(t *testing.T) {
	for _, tc := range []struct {
		ann    map[string]string
		want   podRef
		legacy int
	}{
		{map[string]string{"io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.sandbox-namespace": "a",
			"io.kubernetes.cri.sandbox-name": "web", "io.kubernetes.cri.sandbox-uid": "u1", "restore.stasis.dev/from": " Restore/r "},
			podRef{Namespace: "a", Name: "web", UID: "u1", Container: "app", Grant: "Restore/r"}, 0},
		{map[string]string{"io.kubernetes.cri-o.Metadata": `{"name":"app","attempt":0}`,
			"io.kubernetes.cri-o.Labels": `{"io.kubernetes.pod.namespace":"b","io.kubernetes.pod.name":"w","io.kubernetes.pod.uid":"u2"}`,
			"restore.stasis.dev/from":    "WarmStart/jvm"},
			podRef{Namespace: "b", Name: "w", UID: "u2", Container: "app", Grant: "WarmStart/jvm"}, 0},
		{map[string]string{"io.kubernetes.cri.container-name": "app", "restore.stasis.dev/app": "reg/ck@sha256:1"},
			podRef{Container: "app"}, 1},
		// The pod's pause container is never restored, whatever it is called.
		{map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.container-name": "app"}, podRef{}, 0},
		{nil, podRef{}, 0},
	} {
		spec := &ociSpec{Annotations: tc.ann}
		if got := podOf(spec); got != tc.want {
			t.Errorf("%v: got %+v, want %+v", tc.ann, got, tc.want)
		}
		if got := stasisv1.LegacyRestoreAnnotations(spec.Annotations); len(got) != tc.legacy {
			t.Errorf("%v: legacy annotations %v", tc.ann, got)
		}
	}
}
