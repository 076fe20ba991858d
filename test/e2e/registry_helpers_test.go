package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"
)

// registry is Debian's docker-registry (the distribution registry), run by
// the test on 127.0.0.1.
type registry struct {
	addr string // host:port
	tls  bool
}

const regUser, regPass = "stasis", "s3cret"

// startRegistry starts a registry, plain or with TLS (a certificate made
// here) and basic auth (regUser/regPass), and stops it with the test.
func startRegistry(t *testing.T, secure bool) *registry {
	t.Helper()
	bin := need(t, "docker-registry")
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: %s/data
  delete:
    enabled: true
http:
  addr: %s
`, dir, addr)
	if secure {
		cert, key := selfSignedCert(t, dir)
		hash, err := bcrypt.GenerateFromPassword([]byte(regPass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		os.WriteFile(htpasswd, []byte(regUser+":"+string(hash)+"\n"), 0o600)
		cfg += fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\nauth:\n  htpasswd:\n    realm: stasis-test\n    path: %s\n", cert, key, htpasswd)
	}
	cfgFile := filepath.Join(dir, "config.yml")
	os.WriteFile(cfgFile, []byte(cfg), 0o600)
	cmd := exec.Command(bin, "serve", cfgFile)
	logf, _ := os.Create(filepath.Join(dir, "registry.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	r := &registry{addr: addr, tls: secure}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the test's own certificate
	}}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := client.Get(scheme + "://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return r
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
	t.Fatalf("registry did not start:\n%s", b)
	return nil
}

// flags are what stasis needs to reach the registry.
func (r *registry) flags() []string {
	f := []string{"--tls-verify=false"}
	if r.tls {
		f = append(f, "--creds", regUser+":"+regPass)
	}
	return f
}

func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// faultyProxy stands between stasis and a plain registry and breaks blob
// downloads on demand, as a failing registry or network would.
type faultyProxy struct {
	addr string
	mode atomic.Value // "", "500", "cut", "corrupt", "norange"
}

func startFaultyProxy(t *testing.T, r *registry) *faultyProxy {
	t.Helper()
	target, _ := url.Parse("http://" + r.addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	p := &faultyProxy{}
	p.mode.Store("")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mode := p.mode.Load().(string)
		isBlob := req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:")
		if !isBlob || mode == "" {
			rp.ServeHTTP(w, req)
			return
		}
		switch mode {
		case "norange": // a registry that sends the whole blob whatever is asked
			req.Header.Del("Range")
			rp.ServeHTTP(w, req)
		case "500":
			http.Error(w, "injected failure", http.StatusInternalServerError)
		case "cut", "corrupt":
			resp, err := http.Get(target.String() + req.URL.Path)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(resp.StatusCode)
			if mode == "corrupt" {
				body[len(body)/2] ^= 0xff
				w.Write(body)
				return
			}
			w.Write(body[:len(body)/2])
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close() // the connection drops mid-blob
				}
			}
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return p
}

// storeFiles lists the files of stasis' image store with their sizes, to
// tell that a failed command changed nothing.
func storeFiles(t *testing.T, e *env) string {
	t.Helper()
	var b strings.Builder
	root := filepath.Join(e.root, "images")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if fi, err := d.Info(); err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			fmt.Fprintf(&b, "%s %d\n", rel, fi.Size())
		}
		return nil
	})
	return b.String()
}

// remoteImage reads an image from a registry the test started.
func remoteImage(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
