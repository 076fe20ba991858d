package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushBlob pushes data as a layer of repository host/a/b and returns its
// digest.
func pushBlob(t *testing.T, host string, data []byte) v1.Hash {
	t.Helper()
	l := static.NewLayer(data, types.OCILayer)
	ref, err := ParseReference(host+"/a/b", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(ref.Context(), l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	return d
}

func TestBlobReadsRanges(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	data := make([]byte, 3<<20+123)
	rand.Read(data)
	h := pushBlob(t, host, data)
	b, err := OpenBlob(context.Background(), host+"/a/b:any", h, int64(len(data)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{0, 1}, {1 << 20, 4096}, {int64(len(data)) - 10, 10}, {12345, 1 << 20}} {
		got := make([]byte, c.n)
		if n, err := b.ReadAt(got, c.off); err != nil || int64(n) != c.n {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", c.n, c.off, n, err)
		}
		if !bytes.Equal(got, data[c.off:c.off+c.n]) {
			t.Fatalf("ReadAt(%d, %d): other bytes than the blob's", c.n, c.off)
		}
	}
	// Past the end: what there is, and io.EOF, as io.ReaderAt says.
	got := make([]byte, 100)
	if n, err := b.ReadAt(got, int64(len(data))-40); n != 40 || err != io.EOF || !bytes.Equal(got[:40], data[len(data)-40:]) {
		t.Fatalf("ReadAt across the end = %d, %v", n, err)
	}
	if _, err := b.ReadAt(got, int64(len(data))+1); err == nil {
		t.Fatal("ReadAt past the end succeeded")
	}
}

// A registry that answers a range request with the whole blob cannot be
// read piece by piece: OpenBlob says so, and the caller pulls it whole.
func TestBlobRefusesARegistryWithoutRanges(t *testing.T) {
	reg := ggcrregistry.New()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Range")
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	data := []byte("a checkpoint's bytes")
	h := pushBlob(t, host, data)
	if _, err := OpenBlob(context.Background(), host+"/a/b:any", h, int64(len(data)), Options{}); !errors.Is(err, ErrNoRanges) {
		t.Fatalf("OpenBlob on a registry without ranges: %v, want ErrNoRanges", err)
	}
}

// A proxy that answers another range than the one asked for is caught by
// the Content-Range it sends, not trusted for its length alone.
func TestBlobRefusesAnotherRange(t *testing.T) {
	reg := ggcrregistry.New()
	var shift atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var first, last int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil && shift.Load() && first > 0 {
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first-1, last-1))
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	data := make([]byte, 4096)
	rand.Read(data)
	h := pushBlob(t, host, data)
	b, err := OpenBlob(context.Background(), host+"/a/b:any", h, int64(len(data)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	shift.Store(true)
	if _, err := b.ReadAt(make([]byte, 100), 1000); err == nil || !strings.Contains(err.Error(), "sends") {
		t.Fatalf("a shifted range was taken: %v", err)
	}
}
