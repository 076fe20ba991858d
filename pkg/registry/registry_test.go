package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

// Unit-level: go-containerregistry's in-process registry. The e2e tests run
// Debian's docker-registry.
func TestPushThenImage(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, _ := random.Image(2048, 2)
	o := Options{TLSVerify: false}
	if err := Push(context.Background(), host+"/a/b:1", img, o); err != nil {
		t.Fatal(err)
	}
	got, err := Image(context.Background(), host+"/a/b:1", o)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled %s, pushed %s", d, want)
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	for code, want := range map[int]string{
		http.StatusUnauthorized:        "credentials",
		http.StatusNotFound:            "not found",
		http.StatusInternalServerError: "registry failed",
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				return // the ping succeeds without auth
			}
			w.WriteHeader(code)
		}))
		_, err := Image(context.Background(), strings.TrimPrefix(srv.URL, "http://")+"/a/b:1", Options{})
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("HTTP %d: %v, want it to say %q", code, err, want)
		}
		if errors.Is(err, ErrNotFound) != (code == http.StatusNotFound) {
			t.Errorf("HTTP %d: errors.Is(%v, ErrNotFound) wrong", code, err)
		}
	}
	if _, err := Image(context.Background(), "127.0.0.1:1/a/b:1", Options{Creds: "nocolon"}); err == nil || !strings.Contains(err.Error(), "USER:PASSWORD") {
		t.Errorf("bad --creds: %v", err)
	}
}
