package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/registry"
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
	// Checkpoints of this node (n1): web-1's images may leave it;
	// secret-1's pod is marked never to migrate; far-1 was taken on
	// another node.
	for _, n := range []string{"localhost/stasis/ns/secret-1-abcdef01:app", "localhost/stasis/ns/far-1-99999999:app"} {
		if _, err := src.Add(n, other, nil); err != nil {
			t.Fatal(err)
		}
	}
	ck := func(name, uid, node string, marks map[string]string) *stasisv1.Checkpoint {
		return &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid)},
			Status: stasisv1.CheckpointStatus{NodeName: node, PodTemplate: &corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: marks}}}}
	}
	grants := testGrants(t, nil, ck("web-1", "0123abcd-0000", "n1", nil),
		ck("secret-1", "abcdef01-0000", "n1", map[string]string{policy.Migrate: policy.Never}), ck("far-1", "99999999-0000", "n2", nil))
	s, err := New(Config{Engine: &engine.Engine{Images: src}, Grants: grants, NodeName: "n1", Auth: &CertOrToken{tokens: map[string]Identity{
		"peer-0123456789a": {User: "system:serviceaccount:stasis-system:stasis-agent", Role: Peer, Via: "token"},
		"vera-0123456789a": {User: "vera", Role: Viewer, Via: "token"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// The agent serves with its node's certificate, as a kubelet's.
	caPEM, serving := nodeCertificate(t, "node-a")
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{serving}}
	ts.StartTLS()
	defer ts.Close()
	host := strings.TrimPrefix(ts.URL, "https://")
	pinned := func(subject, token string) registry.Options {
		return registry.Options{Pinned: &registry.Pinned{CA: caPEM, Subject: subject, Organization: "system:nodes", Token: token}}
	}

	dst, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &engine.Engine{Images: dst}
	peer := pinned("system:node:node-a", "peer-0123456789a")
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
		resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := get("/v2/localhost/stasis/ns/web-1-0123abcd/blobs/"+ld.String(), "peer-0123456789a", map[string]string{"Range": "bytes=10-19"}); r.StatusCode != http.StatusPartialContent || r.ContentLength != 10 {
		t.Fatalf("range request: %s, %d bytes", r.Status, r.ContentLength)
	}
	// And as a lazy restore reads it, by TLS although the address is
	// local (registry.Blob).
	size, _ := ls[0].Size()
	blob, err := registry.OpenBlob(context.Background(), host+"/localhost/stasis/ns/web-1-0123abcd", ld, size, peer)
	if err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 10)
	if _, err := blob.ReadAt(part, 100); err != nil {
		t.Fatal(err)
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
		// Only a Checkpoint's images of this node, and not a pod's that
		// must stay on it.
		{"/v2/localhost/other/manifests/x", "peer-0123456789a", http.StatusForbidden},
		{"/v2/localhost/stasis/ns/secret-1-abcdef01/manifests/app", "peer-0123456789a", http.StatusForbidden},
		{"/v2/localhost/stasis/ns/far-1-99999999/manifests/app", "peer-0123456789a", http.StatusForbidden},
		// The repository let in is the one read: a path naming a
		// readable one first and another last is judged by the last.
		{"/v2/localhost/stasis/ns/web-1-0123abcd/manifests/x/manifests/app", "peer-0123456789a", http.StatusForbidden},
		{"/v2/localhost/stasis/ns/web-1-0123abcd/blobs/x/blobs/" + ld.String(), "peer-0123456789a", http.StatusForbidden},
		// Archive bytes are memory: a viewer reads none.
		{"/v2/localhost/stasis/ns/web-1-0123abcd/blobs/" + ld.String(), "vera-0123456789a", http.StatusForbidden},
		{"/v2/", "", http.StatusUnauthorized},
	} {
		if r := get(c.path, c.token, nil); r.StatusCode != c.want {
			t.Errorf("GET %s as %q: %s, want %d", c.path, c.token, r.Status, c.want)
		}
	}
	// Another node's certificate is not the one the caller expects, and
	// a registry at a private address that speaks plain HTTP is not the
	// agent: neither gets the token.
	if _, err := e.PullAs(context.Background(), host+"/"+name, "x:y", pinned("system:node:node-b", "peer-0123456789a")); err == nil ||
		!strings.Contains(err.Error(), "not \"system:node:node-b\"") {
		t.Errorf("a registry with another node's certificate: %v", err)
	}
	var sent []string
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent = append(sent, r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusOK)
	}))
	defer plain.Close()
	if _, err := e.PullAs(context.Background(), strings.TrimPrefix(plain.URL, "http://")+"/"+name, "x:y",
		pinned("system:node:node-a", "peer-0123456789a")); err == nil {
		t.Errorf("a pull from a plain-HTTP registry succeeded")
	}
	for _, a := range sent {
		if a != "" {
			t.Errorf("the token went over plain HTTP: %q", a)
		}
	}
	// A peer may not do what an admin does.
	if code := call(t, s.Handler(), http.MethodPost, "/v1/pods/ns/web/checkpoint", "peer-0123456789a"); code != http.StatusForbidden {
		t.Errorf("a peer's pod checkpoint: %d, want 403", code)
	}
}

// nodeCertificate is a CA (PEM) and a serving certificate it issued to
// node for 127.0.0.1, as the cluster CA issues a kubelet's.
func nodeCertificate(t *testing.T, node string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject:     pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
