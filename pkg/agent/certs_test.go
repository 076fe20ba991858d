package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned is a certificate and its key as PEM, named cn.
func selfSigned(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{cn}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

func servedName(t *testing.T, get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) string {
	t.Helper()
	c, err := get(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

// The kubelet's way: one file holding certificate and key, behind a
// symlink pointed at a new file when the certificate rotates.
func TestCertReloadSymlink(t *testing.T) {
	dir := t.TempDir()
	current := filepath.Join(dir, "kubelet-server-current.pem")
	write := func(name, cn string) {
		c, k := selfSigned(t, cn)
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, append(c, k...), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := current + ".tmp"
		if err := os.Symlink(f, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, current); err != nil {
			t.Fatal(err)
		}
	}
	write("kubelet-server-1.pem", "one")
	r, err := newCertReloader(current, current, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := servedName(t, r.GetCertificate); got != "one" {
		t.Fatalf("serving %q", got)
	}
	write("kubelet-server-2.pem", "two")
	// Not before the interval is over.
	if got := servedName(t, r.GetCertificate); got != "one" {
		t.Fatalf("serving %q before the check", got)
	}
	r.interval = 0
	if got := servedName(t, r.GetCertificate); got != "two" {
		t.Fatalf("serving %q after rotation", got)
	}
	// A broken file leaves the last good pair in use, until a good one
	// comes.
	if err := os.WriteFile(filepath.Join(dir, "kubelet-server-3.pem"), []byte("-----BEGIN CERTIFICATE-----\ngarbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(current)
	if err := os.Symlink(filepath.Join(dir, "kubelet-server-3.pem"), current); err != nil {
		t.Fatal(err)
	}
	if got := servedName(t, r.GetCertificate); got != "two" {
		t.Fatalf("serving %q after a broken rotation", got)
	}
	os.Remove(current) // gone for a moment
	if got := servedName(t, r.GetCertificate); got != "two" {
		t.Fatalf("serving %q with the file gone", got)
	}
	write("kubelet-server-4.pem", "four")
	if got := servedName(t, r.GetCertificate); got != "four" {
		t.Fatalf("serving %q after a good rotation", got)
	}
}

// Separate certificate and key files rewritten in place; through
// TLSConfig.
func TestCertReloadFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	write := func(cn string) {
		c, k := selfSigned(t, cn)
		if err := os.WriteFile(certFile, c, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, k, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// At start an unreadable or invalid pair is an error.
	if _, err := TLSConfig(certFile, keyFile, ""); err == nil {
		t.Fatal("TLSConfig of missing files")
	}
	write("a")
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	if _, err := TLSConfig(certFile, keyFile, ""); err == nil {
		t.Fatal("TLSConfig of an invalid key")
	}
	write("a")
	cfg, err := TLSConfig(certFile, keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := servedName(t, cfg.GetCertificate); got != "a" {
		t.Fatalf("serving %q", got)
	}

	r, err := newCertReloader(certFile, keyFile, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A new pair with a new modification time (set, so that a coarse
	// clock cannot hide it).
	write("b")
	future := time.Now().Add(time.Minute)
	os.Chtimes(certFile, future, future)
	if got := servedName(t, r.GetCertificate); got != "b" {
		t.Fatalf("serving %q after the files changed", got)
	}
	// The certificate rotated, its key not yet: the old pair stays.
	c, _ := selfSigned(t, "c")
	os.WriteFile(certFile, c, 0o600)
	if got := servedName(t, r.GetCertificate); got != "b" {
		t.Fatalf("serving %q with a certificate not matching its key", got)
	}
	write("d")
	if got := servedName(t, r.GetCertificate); got != "d" {
		t.Fatalf("serving %q after both files changed", got)
	}
}
