package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stasis-dev/stasis/pkg/image"
)

// registry serves the node's image store as a read-only OCI registry (the
// pull half of the distribution API) to the agents of other nodes: a
// checkpoint image kept in this node's store, and its signature image,
// are fetched by the node that restores it (a Restore on another node, a
// migration) with the same code as a pull from any registry, range
// requests included. Only Peer (another node's agent) or Admin callers
// are let in: archive bytes are memory.
func (s *Server) registry(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	if rest == "" {
		return "", writeJSON(w, http.StatusOK, struct{}{})
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
