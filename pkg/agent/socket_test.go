package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/wire"
)

// agentTLS is a TLS config serving a self-signed certificate (certs_test's
// selfSigned).
func agentTLS(t *testing.T) *tls.Config {
	t.Helper()
	cert, err := tls.X509KeyPair(selfSigned(t, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

func whoami(w http.ResponseWriter, _ *http.Request, caller *Identity) (string, error) {
	return "me", writeJSON(w, http.StatusOK, caller)
}

func TestNodeSocketServesRootItsOwnRoutes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the node socket serves root only")
	}
	path := filepath.Join(t.TempDir(), "run", "agent.sock")
	// What an agent that was killed leaves behind.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	var audit bytes.Buffer
	s := testServer(t, Config{NodeSocket: path, Audit: &audit})
	s.nodeRoute("GET /v1/node/whoami", "whoami", whoami)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, "127.0.0.1:0", agentTLS(t), 5*time.Second) }()

	c := wire.NewSocketClient(path)
	var id Identity
	deadline := time.Now().Add(10 * time.Second)
	for err := errors.New("not yet"); err != nil; err = c.Do(ctx, "GET", "/v1/node/whoami", nil, &id) {
		if time.Now().After(deadline) {
			t.Fatalf("the node socket does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if id != (Identity{User: "node", Role: Admin, Via: "node socket"}) {
		t.Fatalf("the node socket's caller is %+v", id)
	}
	if fi, err := os.Stat(path); err != nil {
		t.Fatalf("the socket: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("the socket's mode: %v", fi.Mode())
	}
	if code := call(t, s.Handler(), "GET", "/v1/node/whoami", "alice-0123456789"); code != http.StatusNotFound {
		t.Fatalf("the HTTPS API serves a node route: %d", code)
	}
	if err := c.Do(ctx, "GET", "/v1/containers", nil, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("the node socket serves the HTTPS API: %v", err)
	}
	// A second agent does not take the socket from the first.
	if l, err := listenNodeSocket(path); err == nil {
		l.Close()
		t.Fatal("a second agent took over a served socket")
	}

	stop()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket outlived the agent: %v", err)
	}
	if !strings.Contains(audit.String(), `"action":"whoami","target":"me"`) {
		t.Fatalf("the node route was not audited:\n%s", audit.String())
	}
}

func TestNodeSocketRefusesOthersThanRoot(t *testing.T) {
	var audit bytes.Buffer
	s := testServer(t, Config{Audit: &audit})
	s.nodeRoute("GET /v1/node/whoami", "whoami", whoami)
	for _, c := range []struct {
		p    *peer
		want int
	}{
		{&peer{cred: unix.Ucred{Pid: 42, Uid: 1000}}, http.StatusForbidden},
		{&peer{err: errors.New("no credentials")}, http.StatusForbidden},
		{nil, http.StatusForbidden},
		// Root's credentials, but with an error reading them: not root.
		{&peer{cred: unix.Ucred{Pid: 42, Uid: 0}, err: errors.New("no credentials")}, http.StatusForbidden},
		// Root, as the kernel recorded it: served.
		{&peer{cred: unix.Ucred{Pid: 42, Uid: 0, Gid: 1000}}, http.StatusOK},
	} {
		r := httptest.NewRequest("GET", "/v1/node/whoami", nil)
		if c.p != nil {
			r = r.WithContext(context.WithValue(r.Context(), peerKey{}, *c.p))
		}
		w := httptest.NewRecorder()
		s.nodeHandler().ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("peer %+v: %d, want %d", c.p, w.Code, c.want)
		}
	}
	if !strings.Contains(audit.String(), `"user":"uid 1000"`) {
		t.Fatalf("the refusal was not audited:\n%s", audit.String())
	}
}

func TestNodeSocketFileIsNotReplacedByMistake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := listenNodeSocket(path); err == nil {
		l.Close()
		t.Fatal("a regular file was replaced by the socket")
	}
}
