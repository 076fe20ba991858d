// Package agent is `stasis agent`: the one process per node that checkpoints
// and restores, behind an HTTPS API. Callers prove who they are with a
// client certificate or a bearer token; an admin may checkpoint, restore,
// delete and download, a viewer may only list and read metadata. Every
// request is audited, every operation measured (Prometheus, /metrics).
// Root on the node (stasis-runc) asks over a unix socket instead, which
// serves only its own routes (socket.go).
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/untar"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// Config is what an agent is made of.
type Config struct {
	Engine *engine.Engine
	Auth   Authenticator
	// Audit receives the audit log (JSON lines); nil: none.
	Audit io.Writer
	Log   *slog.Logger
	// Parallel is how many operations run at once; more wait their turn.
	Parallel int
	// MaxUpload bounds an uploaded archive, in bytes.
	MaxUpload int64
	// OpTimeout bounds an operation that names no ?timeout.
	OpTimeout time.Duration
	// Pods checkpoints Kubernetes pods on this node; nil when the agent
	// runs outside a cluster.
	Pods *podcheckpoint.Checkpointer
	// Kube is the API server, which says what a pod is and where it runs;
	// NodeName is this node's name there. Pod checkpoints need both.
	Kube     kubernetes.Interface
	NodeName string
	// Grants answers stasis-runc's questions over the node socket; nil
	// outside a cluster.
	Grants *Grants
	// NodeSocket is the unix socket node-local callers (stasis-runc) ask
	// on, as root; "": none.
	NodeSocket string
}

// Server is the agent's HTTP API.
type Server struct {
	cfg     Config
	audit   *Audit
	metrics *metrics
	slots   chan struct{}
	ops     *operations
	mux     *http.ServeMux
	// nodeMux serves the node socket: only what nodeRoute registers.
	nodeMux *http.ServeMux
	// background counts async operations, which shutdown lets finish.
	background sync.WaitGroup
	// peerReads remembers which repositories other nodes' agents may
	// read (peerMayRead).
	peerReads *cache.LRUExpireCache
}

// New builds an agent.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil || cfg.Auth == nil {
		return nil, errors.New("agent: an engine and an authenticator are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	if cfg.Parallel < 1 {
		cfg.Parallel = 8
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = 64 << 30
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 30 * time.Minute
	}
	s := &Server{cfg: cfg, audit: &Audit{w: cfg.Audit}, metrics: newMetrics(),
		slots: make(chan struct{}, cfg.Parallel), ops: newOperations(), mux: http.NewServeMux(), nodeMux: http.NewServeMux(),
		peerReads: cache.NewLRUExpireCache(1024)}
	s.routes()
	return s, nil
}

// Handler is the API, for tests and for Serve.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve listens on addr with TLS, and on the node socket when one is
// configured, until ctx ends or a listener fails, then shuts down
// gracefully: new connections are refused, running operations finish
// (within grace).
func (s *Server) Serve(ctx context.Context, addr string, tlsConfig *tls.Config, grace time.Duration) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer l.Close()
	https := &http.Server{
		Handler: s.mux, TLSConfig: tlsConfig,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelWarn),
	}
	servers := []*http.Server{https}
	serve := []func() error{func() error { return https.ServeTLS(l, "", "") }}
	if s.cfg.NodeSocket != "" {
		nl, err := listenNodeSocket(s.cfg.NodeSocket)
		if err != nil {
			return err
		}
		// Closing the listener removes the socket file.
		defer nl.Close()
		node := s.nodeServer()
		servers = append(servers, node)
		serve = append(serve, func() error { return node.Serve(nl) })
		s.cfg.Log.Info("agent listening", "socket", s.cfg.NodeSocket)
	}
	s.cfg.Log.Info("agent listening", "addr", l.Addr().String())
	errc := make(chan error, len(serve))
	for _, f := range serve {
		go func() { errc <- f() }()
	}
	select {
	case err = <-errc:
		// One listener failed: the agent stops as a whole.
	case <-ctx.Done():
	}
	s.cfg.Log.Info("agent shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	shutdown := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Go(func() { shutdown[i] = srv.Shutdown(sctx) })
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { s.background.Wait(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		s.cfg.Log.Warn("agent stopped with operations still running")
	}
	return errors.Join(append([]error{err}, shutdown...)...)
}

// TLSConfig is the agent's TLS: its certificate, and client certificates
// verified against clientCA when one is given (tokens remain possible).
// The certificate and key (they may be one file, as the kubelet's
// kubelet-server-current.pem) must load now; they are read again when
// they change, checked at most every 10 s (certs.go), a pair that fails
// to load then leaving the last good one in use.
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	getCert, err := serverCertificate(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{GetCertificate: getCert, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pool, err := wire.LoadPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c, nil
}

// handlerFunc answers a request of caller's; target is what the audit
// log names.
type handlerFunc func(w http.ResponseWriter, r *http.Request, caller *Identity) (target string, err error)

// route registers a handler of the HTTPS API, behind authentication and
// authorisation (need).
func (s *Server) route(pattern, action string, need Role, h handlerFunc) {
	s.mux.HandleFunc(pattern, s.audited(action, func(r *http.Request) (*Identity, int, string) {
		id, err := s.cfg.Auth.Authenticate(r)
		if err != nil {
			return nil, http.StatusUnauthorized, "authentication failed: " + err.Error()
		}
		if id == nil {
			return nil, http.StatusUnauthorized, "authentication required: a client certificate or a bearer token"
		}
		if !id.Role.allows(need) {
			return id, http.StatusForbidden, fmt.Sprintf("role %q may not %s", id.Role, action)
		}
		return id, 0, ""
	}, h))
}

// audited wraps a handler with admit (who the caller is, or the status
// and message that refuse it), the audit, the failure metrics and the
// response of errors.
func (s *Server) audited(action string, admit func(r *http.Request) (*Identity, int, string), h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := AuditRecord{Time: start.UTC(), Action: action, User: "anonymous"}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			rec.Status, rec.DurationMS = sw.status(), time.Since(start).Milliseconds()
			s.audit.record(rec)
		}()
		id, code, refusal := admit(r)
		if id != nil {
			rec.User, rec.Role, rec.Via = id.User, id.Role, id.Via
		}
		if refusal != "" {
			rec.Error = refusal
			writeError(sw, code, refusal)
			return
		}
		target, err := h(sw, r, id)
		rec.Target = target
		if err != nil {
			rec.Error = err.Error()
			code := statusOf(err)
			s.metrics.failures.WithLabelValues(action, reason(code, err)).Inc()
			if !sw.written {
				writeError(sw, code, err.Error())
			}
		}
	}
}

// errors a handler can return to choose the status.
var (
	errBadRequest = errors.New("bad request")
	errNotFound   = errors.New("not found")
	errForbidden  = errors.New("forbidden")
	// errUnavailable is what this agent needs and could not reach: the
	// API server, another node's agent. 503: the caller may try again.
	errUnavailable = errors.New("unavailable")
)

// unavailable marks err with errUnavailable when its cause is one that
// may pass: a connection refused, reset or timed out, an API server
// overloaded or unreachable.
func unavailable(err error) error {
	var op *net.OpError
	var ue *url.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &op), errors.As(err, &ue) && ue.Timeout(),
		apierrors.IsServiceUnavailable(err), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err):
		return fmt.Errorf("%w: %w", errUnavailable, err)
	}
	return err
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, errBadRequest), errors.Is(err, archive.ErrInvalid), errors.Is(err, archive.ErrEncrypted),
		errors.Is(err, archive.ErrDigest), errors.Is(err, engine.ErrNotAllowed):
		return http.StatusBadRequest
	case errors.Is(err, untar.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errNotFound), errors.Is(err, engine.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, engine.ErrBusy):
		return http.StatusConflict
	case errors.Is(err, policy.ErrOptedOut), errors.Is(err, errForbidden):
		return http.StatusForbidden
	case errors.Is(err, errUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled):
		return 499 // the client went away, or the operation was cancelled
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

func reason(code int, err error) string {
	switch code {
	case http.StatusConflict:
		return "busy"
	case http.StatusForbidden:
		if errors.Is(err, policy.ErrOptedOut) {
			return "opted_out"
		}
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return "bad_request"
	case http.StatusGatewayTimeout, 499:
		return "timeout_or_cancelled"
	}
	return "internal"
}

// acquire waits for an operation slot, or for ctx to end.
func (s *Server) acquire(ctx context.Context) (func(), error) {
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// opContext bounds an operation by ?timeout=SECONDS (the kubelet's
// parameter) or the agent's default.
func (s *Server) opContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	d := s.cfg.OpTimeout
	if t := r.URL.Query().Get("timeout"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n <= 0 {
			return nil, nil, fmt.Errorf("%w: timeout=%q is not a positive number of seconds", errBadRequest, t)
		}
		d = time.Duration(n) * time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), d)
	return ctx, cancel, nil
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

type statusWriter struct {
	http.ResponseWriter
	code    int
	written bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.written {
		w.code, w.written = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.code, w.written = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
