package engine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// editBundleSpec keeps every other field of config.json, including ones
// stasis does not know.
func TestSetAnnotationKeepsTheSpec(t *testing.T) {
	dir := t.TempDir()
	orig := `{"ociVersion":"1.2.1","process":{"args":["sh"]},"future":{"field":[1,2]},"annotations":{"a":"b"}}`
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(orig), 0o640)
	if err := editBundleSpec(dir, func(s map[string]json.RawMessage) error { return setAnnotation(s, "org.criu.config", "/c") }); err != nil {
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

// A checkpoint of a CRI-O container has CRI-O's /run/.containerenv mount;
// a containerd bundle gets it, from an empty file, and nothing else.
func TestRuntimeMountsAreAdded(t *testing.T) {
	dir := t.TempDir()
	spec := map[string]json.RawMessage{"mounts": json.RawMessage(`[{"destination":"/etc/hosts","type":"bind","source":"/h"}]`)}
	dumped := []specs.Mount{{Destination: "/etc/hosts", Type: "bind"}, {Destination: "/run/.containerenv", Type: "bind"},
		{Destination: "/data", Type: "bind", Source: "/srv"}}
	if err := addRuntimeMounts(dir, spec, dumped); err != nil {
		t.Fatal(err)
	}
	var got []specs.Mount
	json.Unmarshal(spec["mounts"], &got)
	src := filepath.Join(dir, "stasis-containerenv")
	want := []specs.Mount{{Destination: "/etc/hosts", Type: "bind", Source: "/h"},
		{Destination: "/run/.containerenv", Type: "bind", Source: src, Options: []string{"rbind", "ro"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("mounts: %+v, want %+v", got, want)
	}
	if st, err := os.Stat(src); err != nil || st.Size() != 0 {
		t.Fatalf("%s: %v", src, err)
	}
}
