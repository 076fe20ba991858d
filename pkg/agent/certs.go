package agent

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// certCheckInterval is how often at most the serving certificate's files
// are looked at again.
const certCheckInterval = 10 * time.Second

// certReloader serves a key pair read from files, read again when they
// change: in a cluster the agent serves with the kubelet's serving
// certificate, which the kubelet rotates by pointing a symlink at a new
// file. The files are stat'ed (symlinks followed) at most once per
// interval; a pair that fails to load then (half written, a key not yet
// matching its certificate) leaves the last good pair in use, and is
// tried again at the next check.
type certReloader struct {
	certFile, keyFile string
	interval          time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	loaded  [2]os.FileInfo // the files' state when cert was read
	checked time.Time
}

// newCertReloader reads the pair once: it must load now.
func newCertReloader(certFile, keyFile string, interval time.Duration) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, interval: interval}
	st, err := r.stat()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r.cert, r.loaded, r.checked = &cert, st, time.Now()
	return r, nil
}

// GetCertificate is tls.Config's.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.current(), nil
}

// current is the pair, read again first when the interval since the last
// check is over and the files changed.
func (r *certReloader) current() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.checked) < r.interval {
		return r.cert
	}
	r.checked = now
	st, err := r.stat()
	if err != nil || (unchanged(st[0], r.loaded[0]) && unchanged(st[1], r.loaded[1])) {
		return r.cert
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return r.cert // r.loaded kept: tried again at the next check
	}
	r.cert, r.loaded = &cert, st
	return r.cert
}

// stat is the state of the certificate and key files (the same file when
// they are one), symlinks followed.
func (r *certReloader) stat() ([2]os.FileInfo, error) {
	var st [2]os.FileInfo
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return st, err
		}
		st[i] = fi
	}
	return st, nil
}

// unchanged: the same file (a symlink not pointed elsewhere), with the
// same size and modification time.
func unchanged(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// serverCertificate is TLSConfig's: the pair, loaded now, reloaded as
// certReloader says.
func serverCertificate(certFile, keyFile string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	r, err := newCertReloader(certFile, keyFile, certCheckInterval)
	if err != nil {
		return nil, fmt.Errorf("agent certificate: %w", err)
	}
	return r.GetCertificate, nil
}
