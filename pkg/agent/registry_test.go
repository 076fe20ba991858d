package agent

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// A node's store served to a peer: what a repository holds is fetched with
// the registry code every pull uses, and nothing of another repository.
func TestRegistryServesTheStoreToPeers(t *testing.T) {
	src, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const name = "localhost/stasis/ns/web-1-0123abcd:app"
	img, err := random.Image(3<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Add(name, img, nil); err != nil {
		t.Fatal(err)
	}
	other, _ := random.Image(1024, 1)
	if _, err := src.Add("localhost/other:x", other, nil); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: &engine.Engine{Images: src}, Auth: &CertOrToken{tokens: map[string]Identity{
		"peer-0123456789a": {User: "system:serviceaccount:stasis-system:stasis-agent", Role: Peer, Via: "token"},
		"vera-0123456789a": {User: "vera", Role: Viewer, Via: "token"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(s.Handler())
	defer ts.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	client := func(token string) *wire.Client {
		c, err := wire.NewClient(ts.URL, wire.ClientOptions{CA: ca, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	host := strings.TrimPrefix(ts.URL, "https://")

	dst, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &engine.Engine{Images: dst}
	peer := registry.Options{TLSVerify: true, Transport: client("peer-0123456789a").Transport()}
	got, err := e.PullAs(context.Background(), host+"/"+name, name, peer)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got.Name != name || got.Digest != want.String() {
		t.Fatalf("fetched %s %s, want %s %s", got.Name, got.Digest, name, want)
	}
	// By digest too, as a Checkpoint's repository@digest names it.
	if _, err := e.PullAs(context.Background(), host+"/localhost/stasis/ns/web-1-0123abcd@"+want.String(), name, peer); err != nil {
		t.Fatal(err)
	}

	// A blob read by range, as a lazy restore reads a layer.
	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	get := func(path, token string, h map[string]string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := get("/v2/localhost/stasis/ns/web-1-0123abcd/blobs/"+ld.String(), "peer-0123456789a", map[string]string{"Range": "bytes=10-19"}); r.StatusCode != http.StatusPartialContent || r.ContentLength != 10 {
		t.Fatalf("range request: %s, %d bytes", r.Status, r.ContentLength)
	}
	// The other repository's blob is not this repository's.
	ols, _ := other.Layers()
	od, _ := ols[0].Digest()
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/v2/localhost/stasis/ns/web-1-0123abcd/blobs/" + od.String(), "peer-0123456789a", http.StatusNotFound},
		{"/v2/localhost/stasis/ns/web-1-0123abcd/manifests/x", "peer-0123456789a", http.StatusNotFound},
		{"/v2/localhost/stasis/ns/web-1-0123abcd/blobs/sha256:zz", "peer-0123456789a", http.StatusBadRequest},
		// Archive bytes are memory: a viewer reads none.
		{"/v2/localhost/stasis/ns/web-1-0123abcd/blobs/" + ld.String(), "vera-0123456789a", http.StatusForbidden},
		{"/v2/", "", http.StatusUnauthorized},
	} {
		if r := get(c.path, c.token, nil); r.StatusCode != c.want {
			t.Errorf("GET %s as %q: %s, want %d", c.path, c.token, r.Status, c.want)
		}
	}
	// A peer may not do what an admin does.
	if code := call(t, s.Handler(), http.MethodPost, "/v1/pods/ns/web/checkpoint", "peer-0123456789a"); code != http.StatusForbidden {
		t.Errorf("a peer's pod checkpoint: %d, want 403", code)
	}
}
