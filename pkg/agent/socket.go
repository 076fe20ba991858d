package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// The node socket is how node-local callers reach the agent: stasis-runc,
// which the CRI runtime runs as root on the host, has no certificate or
// token, and needs none: the kernel says who is at the other end of a unix
// socket (SO_PEERCRED), and only root is served. What it may ask is only
// what nodeRoute registers, never the HTTPS API.

// nodeRoute registers a handler of the node socket. Its caller is always
// the node (root on this host), an admin.
func (s *Server) nodeRoute(pattern, action string, h handlerFunc) {
	s.nodeMux.HandleFunc(pattern, s.audited(action, func(*http.Request) (*Identity, int, string) {
		return &Identity{User: "node", Role: Admin, Via: "node socket"}, 0, ""
	}, h))
}

// nodeServer serves the node socket.
func (s *Server) nodeServer() *http.Server {
	return &http.Server{
		Handler: s.nodeHandler(),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerOf(c))
		},
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelWarn),
	}
}

// nodeHandler refuses every request of a peer that is not root, before
// any route sees it.
func (s *Server) nodeHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(peer)
		if !ok {
			// Not a connection of nodeServer's: nobody vouched for it.
			p.err = errors.New("no peer credentials")
		}
		if p.err == nil && p.cred.Uid == 0 {
			s.nodeMux.ServeHTTP(w, r)
			return
		}
		msg := "the node socket serves root only"
		user := "unknown"
		if p.err != nil {
			msg += ": " + p.err.Error()
			s.cfg.Log.Warn("node socket: refused a caller whose credentials are unknown", "error", p.err, "path", r.URL.Path)
		} else {
			user = fmt.Sprintf("uid %d", p.cred.Uid)
			s.cfg.Log.Warn("node socket: refused a caller that is not root", "uid", p.cred.Uid, "pid", p.cred.Pid, "path", r.URL.Path)
		}
		s.audit.record(AuditRecord{Time: time.Now().UTC(), User: user, Via: "node socket", Action: "node-socket",
			Target: r.URL.Path, Status: http.StatusForbidden, Error: msg})
		writeError(w, http.StatusForbidden, msg)
	})
}

// peerKey is the context key of a node socket connection's peer.
type peerKey struct{}

// peer is who connected to the node socket, as the kernel recorded it at
// connect.
type peer struct {
	cred unix.Ucred
	err  error
}

func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{err: fmt.Errorf("not a unix socket connection (%T)", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", err)}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", err)}
	}
	if credErr != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", credErr)}
	}
	return peer{cred: *cred}
}

// listenNodeSocket listens on path, mode 0600, in place of the socket an
// agent that was killed left there; an agent still serving it is not
// displaced.
func listenNodeSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("node socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("node socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("node socket %s: another agent serves it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("node socket: removing the stale one: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("node socket: %w", err)
	}
	// Until this chmod the socket has the umask's mode; a caller that
	// connects meanwhile is still refused by its credentials.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("node socket: %w", err)
	}
	return l, nil
}
