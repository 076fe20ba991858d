package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
	"github.com/stasis-dev/stasis/pkg/policy"
)

// registry serves the node's image store as a read-only OCI registry (the
// pull half of the distribution API) to the agents of other nodes: a
// checkpoint image kept in this node's store, and its signature image,
// are fetched by the node that restores it (a Restore on another node, a
// migration) with the same code as a pull from any registry, range
// requests included. Only Peer (another node's agent, and then only a
// Checkpoint's images: peerMayRead) or Admin callers are let in: archive
// bytes are memory.
func (s *Server) registry(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	if rest == "" {
		return "", writeJSON(w, http.StatusOK, struct{}{})
	}
	repo, _, ok := strings.Cut(rest, "/manifests/")
	if !ok {
		repo, _, _ = strings.Cut(rest, "/blobs/")
	}
	if caller.Role == Peer {
		if err := s.peerMayRead(r.Context(), repo); err != nil {
			return rest, registryError(w, err, "DENIED")
		}
	}
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		repo, ref := rest[:i], rest[i+len("/manifests/"):]
		raw, mt, h, err := s.cfg.Engine.Images.Manifest(repo, ref)
		if err != nil {
			return rest, registryError(w, err, "MANIFEST_UNKNOWN")
		}
		w.Header().Set("Content-Type", string(mt))
		w.Header().Set("Docker-Content-Digest", h.String())
		w.Header().Set("Content-Length", fmt.Sprint(len(raw)))
		if r.Method != http.MethodHead {
			w.Write(raw)
		}
		return rest, nil
	}
	if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		repo, digest := rest[:i], rest[i+len("/blobs/"):]
		h, err := v1.NewHash(digest)
		if err != nil {
			return rest, registryError(w, fmt.Errorf("%w: %v", errBadRequest, err), "DIGEST_INVALID")
		}
		f, err := s.cfg.Engine.Images.OpenBlob(repo, h)
		if err != nil {
			return rest, registryError(w, err, "BLOB_UNKNOWN")
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return rest, err
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Docker-Content-Digest", h.String())
		n := &countingWriter{ResponseWriter: w}
		// ServeContent answers HEAD and Range requests (a lazy restore
		// reads the layer where it lies).
		http.ServeContent(n, r, "", st.ModTime(), f)
		s.metrics.bytes.WithLabelValues("served").Add(float64(n.n))
		return rest, nil
	}
	return rest, registryError(w, fmt.Errorf("%w: %s", errNotFound, r.URL.Path), "NAME_UNKNOWN")
}

// registryError answers in the distribution API's error format, which
// registry clients read.
func registryError(w http.ResponseWriter, err error, code string) error {
	status := statusOf(err)
	if errors.Is(err, image.ErrNotFound) {
		status = http.StatusNotFound
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": err.Error()}}})
	return err
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// peerMayRead says whether another node's agent may read repository
// repo: only a pod checkpoint's images (podcheckpoint.LocalImage) that a
// Checkpoint object of the API server records on this node, and never
// one of a pod marked stasis.dev/migrate=never, whose checkpoints stay
// here. Answers are kept a little while: a lazy restore reads a layer in
// many ranges.
func (s *Server) peerMayRead(ctx context.Context, repo string) error {
	if err, ok := s.peerReads.get(repo); ok {
		return err
	}
	err := s.checkPeerRead(ctx, repo)
	s.peerReads.put(repo, err)
	return err
}

func (s *Server) checkPeerRead(ctx context.Context, repo string) error {
	ns, name, uid, ok := podcheckpoint.ParseLocalImage(repo)
	if !ok || s.cfg.Grants == nil {
		return fmt.Errorf("%w: %s is no pod checkpoint of this node", errForbidden, repo)
	}
	var ck stasisv1.Checkpoint
	if err := s.cfg.Grants.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &ck); err != nil {
		return fmt.Errorf("%w: checkpoint %s/%s: %v", errForbidden, ns, name, err)
	}
	if !strings.HasPrefix(string(ck.UID), uid) || ck.Status.NodeName != s.cfg.NodeName {
		return fmt.Errorf("%w: %s is not checkpoint %s/%s's on this node", errForbidden, repo, ns, name)
	}
	if t := ck.Status.PodTemplate; t != nil {
		if err := policy.MayCheckpoint("pod "+ns+"/"+ck.Spec.PodName, t.Annotations, true); err != nil {
			return err
		}
	}
	return nil
}

// peerReads remembers peerMayRead's answers for a short while.
type peerReads struct {
	mu      sync.Mutex
	answers map[string]peerRead
}

type peerRead struct {
	err     error
	expires time.Time
}

func (p *peerReads) get(repo string) (error, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.answers[repo]
	if !ok || time.Now().After(a.expires) {
		return nil, false
	}
	return a.err, true
}

func (p *peerReads) put(repo string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.answers == nil || len(p.answers) > 1024 {
		p.answers = map[string]peerRead{}
	}
	p.answers[repo] = peerRead{err: err, expires: time.Now().Add(10 * time.Second)}
}
