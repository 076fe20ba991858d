package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrNoRanges is a registry that answers a range request with the whole
// blob: it cannot be read piece by piece.
var ErrNoRanges = errors.New("the registry does not serve byte ranges")

// rangeTimeout bounds one range request: a registry that stops answering
// must not hang a reader (a lazily restored process waits on it).
const rangeTimeout = 2 * time.Minute

// Blob is a blob in a registry read by HTTP range requests (RFC 9110,
// which the distribution registry serves for blobs): io.ReaderAt of its
// bytes, nothing fetched until read. It checks no digest: a reader checks
// what it reads (an archive's frames against their index).
type Blob struct {
	url    string
	size   int64
	client *http.Client
}

// OpenBlob opens blob digest, of size bytes, in the repository of ref,
// authenticated as the registry asks. It fails with ErrNoRanges when the
// registry does not serve ranges.
func OpenBlob(ctx context.Context, ref string, digest v1.Hash, size int64, o Options) (*Blob, error) {
	r, err := ParseReference(ref, o)
	if err != nil {
		return nil, err
	}
	repo := r.Context()
	rt, err := o.transport(ctx, repo)
	if err != nil {
		return nil, explain("open blob of", ref, err)
	}
	scheme := repo.Scheme()
	if o.Pinned != nil {
		// Scheme says http for a private address; a pinned registry is
		// reached by TLS only.
		scheme = "https"
	}
	b := &Blob{
		url:    fmt.Sprintf("%s://%s/v2/%s/blobs/%s", scheme, repo.RegistryStr(), repo.RepositoryStr(), digest),
		size:   size,
		client: &http.Client{Transport: rt},
	}
	// The last byte: a registry that ignores ranges says so now, before a
	// reader has come to rely on it, and with one byte, not the blob.
	if size > 0 {
		if _, err := b.ReadAt(make([]byte, 1), size-1); err != nil {
			return nil, explain("open blob of", ref, err)
		}
	}
	return b, nil
}

// transport is an authenticated round tripper for repo, as the remote
// package builds its own.
func (o Options) transport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	if o.Pinned != nil {
		t, err := o.Pinned.transport()
		if err != nil {
			return nil, err
		}
		return transport.NewRetry(transport.NewUserAgent(t, "stasis")), nil
	}
	auth, err := o.basicAuth()
	if err != nil {
		return nil, err
	}
	if auth == nil {
		if auth, err = authn.DefaultKeychain.Resolve(repo); err != nil {
			return nil, err
		}
	}
	base := o.baseTransport()
	base = transport.NewRetry(transport.NewUserAgent(base, "stasis"))
	return transport.NewWithContext(ctx, repo.Registry, auth, base, []string{repo.Scope(transport.PullScope)})
}

// Size is the blob's size.
func (b *Blob) Size() int64 { return b.size }

// ReadAt reads len(p) bytes at off with one range request.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > b.size {
		return 0, fmt.Errorf("blob: read at %d of %d bytes", off, b.size)
	}
	want := p[:min(int64(len(p)), b.size-off)]
	if len(want) == 0 {
		return 0, io.EOF
	}
	rc, err := b.ReadRange(context.Background(), off, int64(len(want)))
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := io.ReadFull(rc, want)
	if err != nil {
		return n, fmt.Errorf("blob: %d bytes at %d: %w", len(want), off, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadRange streams n bytes at off, which must lie within the blob, with
// one range request, until ctx is done; the caller closes the stream, and
// reads the n bytes it said, no more.
func (b *Blob) ReadRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if off < 0 || n <= 0 || off+n > b.size {
		return nil, fmt.Errorf("blob: bytes %d-%d of %d", off, off+n-1, b.size)
	}
	ctx, cancel := context.WithTimeout(ctx, rangeTimeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := b.client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := rangeAnswer(resp, off, n); err != nil {
		resp.Body.Close()
		cancel()
		return nil, err
	}
	return &rangeBody{ReadCloser: resp.Body, cancel: cancel}, nil
}

// rangeAnswer checks that resp is the n bytes at off asked for: a proxy
// that answers another range would otherwise be taken at its word.
func rangeAnswer(resp *http.Response, off, n int64) error {
	if resp.StatusCode == http.StatusOK {
		return ErrNoRanges
	}
	if err := transport.CheckError(resp, http.StatusPartialContent); err != nil {
		return err
	}
	if resp.ContentLength >= 0 && resp.ContentLength != n {
		return fmt.Errorf("blob: asked for %d bytes at %d, the registry sends %d", n, off, resp.ContentLength)
	}
	var first, last int64
	if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/", &first, &last); err != nil || first != off || last != off+n-1 {
		return fmt.Errorf("blob: asked for bytes %d-%d, the registry sends %q", off, off+n-1, resp.Header.Get("Content-Range"))
	}
	return nil
}

// rangeBody is a range's stream, which ends its request's deadline when
// closed.
type rangeBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (r *rangeBody) Close() error {
	err := r.ReadCloser.Close()
	r.cancel()
	return err
}
