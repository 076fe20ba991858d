// Package agent is `stasis agent`: the one process per node that checkpoints
// and restores, behind an HTTPS API. Callers prove who they are with a
// client certificate or a bearer token; an admin may checkpoint, restore,
// delete and download, a viewer may only list and read metadata. Every
// request is audited, every operation measured (Prometheus, /metrics).
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
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
	"github.com/stasis-dev/stasis/pkg/untar"
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
	// Pods checkpoints Kubernetes pods through the node's kubelet; nil
	// when the agent runs outside a cluster.
	Pods *podcheckpoint.Checkpointer
}

// Server is the agent's HTTP API.
type Server struct {
	cfg     Config
	audit   *Audit
	metrics *metrics
	slots   chan struct{}
	ops     *operations
	mux     *http.ServeMux
	// background counts async operations, which shutdown lets finish.
	background sync.WaitGroup
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
		slots: make(chan struct{}, cfg.Parallel), ops: newOperations(), mux: http.NewServeMux()}
	s.routes()
	return s, nil
}

// Handler is the API, for tests and for Serve.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve listens on addr with TLS until ctx ends, then shuts down
// gracefully: new connections are refused, running operations finish
// (within grace).
func (s *Server) Serve(ctx context.Context, addr string, tlsConfig *tls.Config, grace time.Duration) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: s.mux, TLSConfig: tlsConfig,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelWarn),
	}
	s.cfg.Log.Info("agent listening", "addr", l.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.cfg.Log.Info("agent shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err = srv.Shutdown(sctx)
	done := make(chan struct{})
	go func() { s.background.Wait(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		s.cfg.Log.Warn("agent stopped with operations still running")
	}
	return err
}

// TLSConfig is the agent's TLS: its certificate, and client certificates
// verified against clientCA when one is given (tokens remain possible).
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("agent certificate: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c, nil
}

// route wraps a handler with authentication, authorisation (need), audit
// and the response of errors.
func (s *Server) route(pattern, action string, need Role, h func(w http.ResponseWriter, r *http.Request, id *Identity) (target string, err error)) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := AuditRecord{Time: start.UTC(), Action: action}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			rec.Status, rec.DurationMS = sw.status(), time.Since(start).Milliseconds()
			s.audit.record(rec)
		}()
		id, err := s.cfg.Auth.Authenticate(r)
		if err != nil || id == nil {
			rec.User = "anonymous"
			msg := "authentication required: a client certificate or a bearer token"
			if err != nil {
				msg = "authentication failed: " + err.Error()
			}
			rec.Error = msg
			writeError(sw, http.StatusUnauthorized, msg)
			return
		}
		rec.User, rec.Role, rec.Via = id.User, id.Role, id.Via
		if !id.Role.allows(need) {
			rec.Error = fmt.Sprintf("role %q may not %s", id.Role, action)
			writeError(sw, http.StatusForbidden, rec.Error)
			return
		}
		target, err := h(sw, r, id)
		rec.Target = target
		if err != nil {
			rec.Error = err.Error()
			code := statusOf(err)
			s.metrics.failures.WithLabelValues(action, reason(code)).Inc()
			if !sw.written {
				writeError(sw, code, err.Error())
			}
		}
	})
}

// errors a handler can return to choose the status.
var (
	errBadRequest = errors.New("bad request")
	errNotFound   = errors.New("not found")
)

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
	case errors.Is(err, engine.ErrOptedOut):
		return http.StatusForbidden
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

func reason(code int) string {
	switch code {
	case http.StatusConflict:
		return "busy"
	case http.StatusForbidden:
		return "opted_out"
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

// operations are long operations that callers can follow and cancel.
type operations struct {
	mu  sync.Mutex
	ops map[string]*operation
	n   int
}

type operation struct {
	ID      string    `json:"id"`
	Action  string    `json:"action"`
	Target  string    `json:"target"`
	State   string    `json:"state"` // running, done, failed, cancelled
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	Error   string    `json:"error,omitempty"`
	Result  any       `json:"result,omitempty"`
	cancel  context.CancelFunc
}

func newOperations() *operations { return &operations{ops: map[string]*operation{}} }

func (o *operations) start(action, target string, cancel context.CancelFunc) *operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n++
	op := &operation{ID: strconv.Itoa(o.n), Action: action, Target: target, State: "running",
		Started: time.Now().UTC(), cancel: cancel}
	o.ops[op.ID] = op
	return op
}

func (o *operations) finish(op *operation, result any, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	op.Ended, op.Result = time.Now().UTC(), result
	switch {
	case errors.Is(err, context.Canceled):
		op.State, op.Error = "cancelled", err.Error()
	case err != nil:
		op.State, op.Error = "failed", err.Error()
	default:
		op.State = "done"
	}
}

func (o *operations) get(id string) (operation, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	op, ok := o.ops[id]
	if !ok {
		return operation{}, false
	}
	return *op, true
}

func (o *operations) cancel(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	op, ok := o.ops[id]
	if ok && op.State == "running" {
		op.cancel()
	}
	return ok
}
