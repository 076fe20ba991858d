package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
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
	repo, kind, ref, ok := registryPath(rest)
	if !ok {
		return rest, registryError(w, fmt.Errorf("%w: %s", errNotFound, rest), "NAME_UNKNOWN")
	}
	// The repository read below is the one let in here: the path is
	// parsed once.
	if caller.Role == Peer {
		if err := s.peerMayRead(r.Context(), repo); err != nil {
			return rest, registryError(w, err, "DENIED")
		}
	}
	if kind == "manifests" {
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
	h, err := v1.NewHash(ref)
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

// registryPath splits a /v2/ path (past the prefix) into its repository,
// its kind ("manifests" or "blobs") and the tag, digest or blob digest.
func registryPath(rest string) (repo, kind, ref string, ok bool) {
	for _, kind := range []string{"manifests", "blobs"} {
		if i := strings.LastIndex(rest, "/"+kind+"/"); i > 0 {
			return rest[:i], kind, rest[i+len(kind)+2:], true
		}
	}
	return "", "", "", false
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
// here. Answers are kept a little while (peerReadTTL): a lazy restore
// reads a layer in many ranges.
func (s *Server) peerMayRead(ctx context.Context, repo string) error {
	if a, ok := s.peerReads.Get(repo); ok {
		return a.(peerRead).err
	}
	err := s.checkPeerRead(ctx, repo)
	s.peerReads.Add(repo, peerRead{err}, peerReadTTL)
	return err
}

// peerRead is a peerMayRead answer, nil error included.
type peerRead struct{ err error }

const peerReadTTL = 10 * time.Second

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
	return mayLeaveNode(&ck)
}
