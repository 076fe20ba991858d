package engine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// setBundleAnnotation keeps every other field of config.json, including ones
// stasis does not know.
func TestSetAnnotationKeepsTheSpec(t *testing.T) {
	dir := t.TempDir()
	orig := `{"ociVersion":"1.2.1","process":{"args":["sh"]},"future":{"field":[1,2]},"annotations":{"a":"b"}}`
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(orig), 0o640)
	if err := setBundleAnnotation(dir, "org.criu.config", "/c"); err != nil {
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
