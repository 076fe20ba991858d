package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Pinned is a registry whose identity is known in advance: another
// node's stasis agent serving its store (the agent's /v2/ API). Its
// certificate must chain to CA alone and name Subject (and Organization,
// when set), and each request carries Token; Creds, the keychain and the
// system's roots play no part. It is plain data, so that a restore hands
// it to its lazy-pages helper as it hands the rest of Options.
type Pinned struct {
	CA           []byte `json:"ca"` // PEM
	Subject      string `json:"subject"`
	Organization string `json:"organization,omitempty"`
	Token        string `json:"token"`
}

// transport is the HTTP transport to the pinned registry.
func (p *Pinned) transport() (http.RoundTripper, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.CA) {
		return nil, errors.New("pinned registry: no certificate in its CA")
	}
	if p.Subject == "" || p.Token == "" {
		return nil, errors.New("pinned registry: a subject and a token are required")
	}
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool,
		// Checked once the chain is verified, before any request (so the
		// token) is sent.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the registry showed no certificate")
			}
			c := cs.PeerCertificates[0]
			if c.Subject.CommonName != p.Subject || (p.Organization != "" && !slices.Contains(c.Subject.Organization, p.Organization)) {
				return fmt.Errorf("the registry's certificate is %q (organisation %v), not %q (%s)",
					c.Subject.CommonName, c.Subject.Organization, p.Subject, p.Organization)
			}
			return nil
		}}
	return &bearer{token: p.Token, next: t}, nil
}

type bearer struct {
	token string
	next  http.RoundTripper
}

// RoundTrip sends the token over TLS only: go-containerregistry tries
// plain HTTP too for a private address, and that request must go out
// without it, and fail.
func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("pinned registry %s: refused over plain HTTP", r.URL.Host)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
