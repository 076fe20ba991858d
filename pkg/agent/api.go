package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// containerView is a container as the API lists it.
type containerView struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Image  string `json:"image"`
	Status string `json:"status"`
	// ExitCode is set for an exited container whose exit was recorded.
	ExitCode *int              `json:"exit_code,omitempty"`
	Pid      int               `json:"pid,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Created  time.Time         `json:"created"`
}

const maxJSON = 1 << 20

func (s *Server) routes() {
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	s.route("GET /metrics", "metrics", Viewer, func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		s.refreshStoreMetrics()
		s.metricsHandler().ServeHTTP(w, r)
		return "", nil
	})
	s.route("GET /v1/containers", "list-containers", Viewer, func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		cs, err := s.cfg.Engine.List(r.Context())
		if err != nil {
			return "", err
		}
		out := []containerView{}
		for _, c := range cs {
			out = append(out, containerView{ID: c.ID, Name: c.Name, Image: c.Image, Status: string(c.Status), ExitCode: c.ExitCode,
				Pid: c.Pid, Labels: c.Labels, Created: c.Created})
		}
		return "", writeJSON(w, http.StatusOK, out)
	})
	s.route("GET /v1/checkpoints", "list-checkpoints", Viewer, func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		list, err := s.cfg.Engine.Checkpoints.List()
		if err != nil {
			return "", err
		}
		return "", writeJSON(w, http.StatusOK, list)
	})
	s.route("GET /v1/checkpoints/{id}", "get-checkpoint", Viewer, func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		id := r.PathValue("id")
		ent, err := s.cfg.Engine.Checkpoints.Get(id)
		if err != nil {
			return id, fmt.Errorf("%w: %v", errNotFound, err)
		}
		return id, writeJSON(w, http.StatusOK, ent)
	})
	s.route("GET /v1/checkpoints/{id}/archive", "download-checkpoint", Admin, s.download)
	s.route("DELETE /v1/checkpoints/{id}", "delete-checkpoint", Admin, func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		id := r.PathValue("id")
		if _, err := s.cfg.Engine.Checkpoints.Get(id); err != nil {
			return id, fmt.Errorf("%w: %v", errNotFound, err)
		}
		if err := s.cfg.Engine.Checkpoints.Delete(id); err != nil {
			return id, err
		}
		w.WriteHeader(http.StatusNoContent)
		return id, nil
	})
	s.route("POST /v1/containers/{name}/checkpoint", "checkpoint", Admin, s.checkpoint)
	s.route("POST /v1/restore", "restore", Admin, s.restore)
	s.route("PUT /v1/restore", "restore-upload", Admin, s.restoreUpload)
	s.route("POST /checkpoint/{namespace}/{pod}/{container}", "checkpoint", Admin, s.kubeletCheckpoint)
	s.route("POST /v1/pods/{namespace}/{pod}/checkpoint", "pod-checkpoint", Admin, s.podCheckpoint)
	s.route("POST /v1/pods/{namespace}/{pod}/release", "pod-release", Admin, s.podRelease)
	s.route("GET /v1/operations/{id}", "get-operation", Viewer, func(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
		op, ok := s.ops.get(r.PathValue("id"), caller)
		if !ok {
			return r.PathValue("id"), fmt.Errorf("%w: no operation %s", errNotFound, r.PathValue("id"))
		}
		return op.ID, writeJSON(w, http.StatusOK, op)
	})
	s.route("DELETE /v1/operations/{id}", "cancel-operation", Admin, func(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
		if !s.ops.cancel(r.PathValue("id"), caller) {
			return r.PathValue("id"), fmt.Errorf("%w: no operation %s", errNotFound, r.PathValue("id"))
		}
		w.WriteHeader(http.StatusAccepted)
		return r.PathValue("id"), nil
	})
	s.route("GET /v2/", "registry", Peer, s.registry)
	s.nodeRoutes()
}

// run runs an operation, waiting for a slot: in the request (the
// response carries the result) or, with ?async=true, in the background
// (the response is 202 and the operation, to follow at
// /v1/operations/{id} and cancel with DELETE there). The operation is
// caller's.
func (s *Server) run(w http.ResponseWriter, r *http.Request, caller *Identity, action, target string, f func(ctx context.Context) (any, error)) error {
	ctx, cancel, err := s.opContext(r)
	if err != nil {
		return err
	}
	async := r.URL.Query().Get("async") == "true"
	if async {
		cancel()
		ctx, cancel = context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.OpTimeout)
	}
	op := s.ops.start(action, target, caller, cancel)
	do := func() (any, error) {
		defer cancel()
		start := time.Now()
		release, err := s.acquire(ctx)
		if err != nil {
			s.ops.finish(op, nil, err)
			return nil, err
		}
		defer release()
		res, err := f(ctx)
		if err != nil && errors.Is(ctx.Err(), context.Canceled) {
			// The engine reports how its commands died; the caller cancelled.
			err = fmt.Errorf("%w: %v", context.Canceled, err)
		}
		result := "ok"
		if err != nil {
			result = "error"
		}
		s.metrics.duration.WithLabelValues(action, result).Observe(time.Since(start).Seconds())
		s.ops.finish(op, res, err)
		s.cfg.Log.Info(action, "target", target, "operation", op.ID, "duration", time.Since(start), "error", err)
		return res, err
	}
	if async {
		s.background.Add(1)
		go func() {
			defer s.background.Done()
			do()
		}()
		return writeJSON(w, http.StatusAccepted, s.ops.snapshot(op))
	}
	res, err := do()
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
	name := r.PathValue("name")
	var req wire.CheckpointRequest
	if err := decode(r, &req); err != nil {
		return name, err
	}
	o := engine.CheckpointOptions{
		LeaveRunning: req.LeaveRunning, TCPEstablished: req.TCPEstablished, FileLocks: req.FileLocks,
		CreateImage: req.CreateImage, Push: req.Push,
	}
	for _, k := range req.EncryptTo {
		r, err := age.ParseX25519Recipient(k)
		if err != nil {
			return name, fmt.Errorf("%w: encrypt_to %q: %v", errBadRequest, k, err)
		}
		o.Recipients = append(o.Recipients, r)
	}
	if req.Compression != "" {
		c, err := archive.ParseCompression(req.Compression)
		if err != nil {
			return name, fmt.Errorf("%w: %v", errBadRequest, err)
		}
		o.Compression = c
	}
	o.Registry.TLSVerify = true
	return name, s.run(w, r, caller, "checkpoint", name, func(ctx context.Context) (any, error) {
		res, err := s.cfg.Engine.Checkpoint(ctx, name, o)
		if err == nil {
			s.metrics.bytes.WithLabelValues("written").Add(float64(res.Size))
		}
		return res, err
	})
}

// kubeletCheckpoint is the kubelet's checkpoint endpoint, for tools written
// against it: the container is found by its Kubernetes labels, and the
// answer is {"items": ["<archive path>"]}.
func (s *Server) kubeletCheckpoint(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	target := ns + "/" + pod + "/" + ctr
	cs, err := s.cfg.Engine.List(r.Context())
	if err != nil {
		return target, err
	}
	var found *engine.Container
	for _, c := range cs {
		if c.Labels["io.kubernetes.pod.namespace"] == ns && c.Labels["io.kubernetes.pod.name"] == pod &&
			c.Labels["io.kubernetes.container.name"] == ctr {
			found = c
		}
	}
	if found == nil {
		return target, fmt.Errorf("%w: no container %s in pod %s/%s", errNotFound, ctr, ns, pod)
	}
	ctx, cancel, err := s.opContext(r)
	if err != nil {
		return target, err
	}
	defer cancel()
	release, err := s.acquire(ctx)
	if err != nil {
		return target, err
	}
	defer release()
	start := time.Now()
	// The kubelet's checkpoint leaves the container running.
	res, err := s.cfg.Engine.Checkpoint(ctx, found.ID, engine.CheckpointOptions{LeaveRunning: true})
	if err != nil {
		s.metrics.duration.WithLabelValues("checkpoint", "error").Observe(time.Since(start).Seconds())
		return target, err
	}
	s.metrics.duration.WithLabelValues("checkpoint", "ok").Observe(time.Since(start).Seconds())
	s.metrics.bytes.WithLabelValues("written").Add(float64(res.Size))
	return target, writeJSON(w, http.StatusOK, map[string][]string{"items": {res.Archive}})
}

func (s *Server) restore(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
	var req wire.RestoreRequest
	if err := decode(r, &req); err != nil {
		return "", err
	}
	if (req.Checkpoint == "") == (req.Image == "") {
		return "", fmt.Errorf("%w: give one of checkpoint and image", errBadRequest)
	}
	o := engine.RestoreOptions{Name: req.Name, LazyPages: req.LazyPages, TCPEstablished: req.TCPEstablished, FileLocks: req.FileLocks,
		Privileged: req.Privileged}
	for dst, src := range req.Volumes {
		o.Volumes = append(o.Volumes, runc.Mount{Source: src, Destination: dst})
	}
	o.Registry.TLSVerify = true
	target := req.Checkpoint + req.Image
	o.Container = target
	return target, s.run(w, r, caller, "restore", target, func(ctx context.Context) (any, error) {
		return s.cfg.Engine.Restore(ctx, o)
	})
}

// restoreUpload restores an archive streamed in the request body (a
// migration from another node); ?name= names the container, ?digest= is
// the archive's sha256, ?volume=SRC:DST (repeatable) and ?privileged=true
// are the CLI's --volume and --privileged.
func (s *Server) restoreUpload(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
	q := r.URL.Query()
	name := q.Get("name")
	var volumes []runc.Mount
	for _, v := range q["volume"] {
		m, err := runc.ParseMount(v)
		if err != nil {
			return name, fmt.Errorf("%w: %v", errBadRequest, err)
		}
		volumes = append(volumes, m)
	}
	f, err := s.cfg.Engine.TempFile("upload-*.tar")
	if err != nil {
		return name, err
	}
	defer os.Remove(f.Name())
	// The upload is part of the operation: a client sending slowly gets
	// the operation's timeout too, not a connection held for ever (closing
	// the body ends a blocked read, on HTTP/1 and HTTP/2 alike).
	timer := time.AfterFunc(s.cfg.OpTimeout, func() { r.Body.Close() })
	n, err := io.Copy(f, http.MaxBytesReader(w, r.Body, s.cfg.MaxUpload))
	if !timer.Stop() && err != nil {
		err = fmt.Errorf("%w: not received within %s", context.DeadlineExceeded, s.cfg.OpTimeout)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return name, fmt.Errorf("upload: %w", err)
	}
	s.metrics.bytes.WithLabelValues("read").Add(float64(n))
	// ?digest=sha256:... (what GET .../archive sent as its Digest) is
	// checked before anything of the upload is used.
	o := engine.RestoreOptions{Import: f.Name(), Name: name, LazyPages: q.Get("lazy_pages") == "true",
		ImportDigest: q.Get("digest"), Volumes: volumes, Privileged: q.Get("privileged") == "true"}
	return name, s.run(w, r, caller, "restore", name, func(ctx context.Context) (any, error) {
		res, err := s.cfg.Engine.Restore(ctx, o)
		if err != nil {
			// The caller knows its upload, not the file it went to.
			return nil, renamed{err, f.Name(), "the upload"}
		}
		return res, nil
	})
}

// renamed is err with a name in its text replaced, for what it wraps
// unchanged (statusOf still sees it).
type renamed struct {
	err       error
	old, with string
}

func (r renamed) Error() string { return strings.ReplaceAll(r.err.Error(), r.old, r.with) }
func (r renamed) Unwrap() error { return r.err }

func (s *Server) download(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
	id := r.PathValue("id")
	ent, err := s.cfg.Engine.Checkpoints.Get(id)
	if err != nil {
		return id, fmt.Errorf("%w: %v", errNotFound, err)
	}
	if ent.RootfsDiff != "" {
		return id, fmt.Errorf("%w: checkpoint %s is part of a timeline (its rootfs diff is shared); restore it here instead", errBadRequest, id)
	}
	f, err := os.Open(ent.Archive)
	if err != nil {
		return id, err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(ent.Size))
	w.Header().Set("Digest", "sha-256="+ent.Digest)
	n, err := io.Copy(w, f)
	s.metrics.bytes.WithLabelValues("read").Add(float64(n))
	return id, err
}

func (s *Server) refreshStoreMetrics() {
	list, err := s.cfg.Engine.Checkpoints.List()
	if err != nil {
		return
	}
	var total int64
	for _, e := range list {
		total += e.Size
	}
	s.metrics.stored.Set(float64(len(list)))
	s.metrics.storedSize.Set(float64(total))
}

func decode(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && err != io.EOF {
		return fmt.Errorf("%w: body: %v", errBadRequest, err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
