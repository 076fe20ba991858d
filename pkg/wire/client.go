package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// ErrUnavailable is an agent that could not be reached, or that answered
// 503: one that could not reach what it needed (another node's agent).
// Such a failure may pass; its text travels in stasis-runc's error through
// the CRI runtime to the pod's status, where the Restore controller finds
// it and waits for the kubelet's next attempt rather than failing.
var ErrUnavailable = errors.New("unavailable, to be tried again")

// Client calls an agent: the CLI with --host, the controller, stasis-runc
// (NewSocketClient).
type Client struct {
	base  string
	http  *http.Client
	token string
}

// ClientOptions say how to reach and convince an agent.
type ClientOptions struct {
	// CA verifies the agent's certificate (PEM file); empty: the system's.
	CA string
	// Cert and Key are a client certificate; Token a bearer token.
	Cert, Key, Token string
	// VerifyPeer, when set, also checks the agent's certificate once its
	// chain is verified, before any request (so any token) is sent.
	VerifyPeer func(*x509.Certificate) error
}

// NewClient makes a client for the agent at url ("https://host:port").
func NewClient(url string, o ClientOptions) (*Client, error) {
	if !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("--host %q: the agent speaks HTTPS only (https://HOST:PORT)", url)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CA != "" {
		pool, err := LoadPool(o.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if o.Cert != "" {
		pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if o.VerifyPeer != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("the agent showed no certificate")
			}
			return o.VerifyPeer(cs.PeerCertificates[0])
		}
	}
	return &Client{base: strings.TrimSuffix(url, "/"), token: o.Token,
		http: &http.Client{Timeout: time.Hour, Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
}

// NewSocketClient makes a client for the agent's node socket at path:
// what stasis-runc, root on the node, asks the agent with.
func NewSocketClient(path string) *Client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	// The host in the URL names nothing: every connection goes to path.
	return &Client{base: "http://stasis-agent",
		http: &http.Client{Timeout: time.Hour, Transport: &http.Transport{DialContext: dial}}}
}

// Do sends a request with a JSON body (nil: none) and decodes the JSON
// answer into out (nil: ignore it). An error answer becomes an error with
// the agent's message.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return fmt.Errorf("agent %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			return fmt.Errorf("agent: %w: %s (%d)", ErrUnavailable, e.Error, resp.StatusCode)
		}
		return fmt.Errorf("agent: %s (%d)", e.Error, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// LoadPool reads the PEM certificates of a CA file.
func LoadPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA %s: no certificates", file)
	}
	return pool, nil
}
