package ociwrap

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
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

func TestCheckpointRefFromEitherRuntime(t *testing.T) {
	for _, tc := range []struct {
		ann  map[string]string
		want string
	}{
		{map[string]string{"io.kubernetes.cri.container-name": "app", RestoreAnnotationPrefix + "app": " reg/ck@sha256:1 "}, "reg/ck@sha256:1"},
		{map[string]string{"io.kubernetes.cri-o.Metadata": `{"name":"app","attempt":0}`, RestoreAnnotationPrefix + "app": "img"}, "img"},
		{map[string]string{"io.kubernetes.cri.container-name": "other", RestoreAnnotationPrefix + "app": "img"}, ""},
		// The pod's pause container is never restored, whatever it is called.
		{map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.container-name": "app",
			RestoreAnnotationPrefix + "app": "img"}, ""},
		{nil, ""},
	} {
		if got := checkpointRef(&ociSpec{Annotations: tc.ann}); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.ann, got, tc.want)
		}
	}
}

// setAnnotation keeps every other field of config.json, including ones
// the wrapper does not know.
func TestSetAnnotationKeepsTheSpec(t *testing.T) {
	dir := t.TempDir()
	orig := `{"ociVersion":"1.2.1","process":{"args":["sh"]},"future":{"field":[1,2]},"annotations":{"a":"b"}}`
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(orig), 0o640)
	if err := setAnnotation(dir, "org.criu.config", "/c"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	var got, want map[string]any
	json.Unmarshal(b, &got)
	json.Unmarshal([]byte(orig), &want)
	want["annotations"].(map[string]any)["org.criu.config"] = "/c"
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config.json became %s", b)
	}
	if st, _ := os.Stat(filepath.Join(dir, "config.json")); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode changed to %v", st.Mode())
	}
}
