package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// countingReader is a remote blob in memory, counting what is asked of it,
// failing while fail is set.
type countingReader struct {
	*bytes.Reader
	asked atomic.Int64
	fail  atomic.Bool
}

func (r *countingReader) ReadRange(_ context.Context, off, n int64) (io.ReadCloser, error) {
	if r.fail.Load() {
		return nil, errors.New("connection reset")
	}
	r.asked.Add(n)
	return io.NopCloser(io.NewSectionReader(r.Reader, off, n)), nil
}

func hashOf(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// Readers in any order and Fill behind them fetch every byte once, and the
// file is then the blob.
func TestPartialFetchesEachChunkOnce(t *testing.T) {
	data := make([]byte, 9*PartialChunk+777)
	rand.Read(data)
	remote := &countingReader{Reader: bytes.NewReader(data)}
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := NewPartial(context.Background(), f, int64(len(data)), remote, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, off := range []int64{int64(len(data)) - 100, 5*PartialChunk - 10, 0, 5*PartialChunk - 10, 3 * PartialChunk} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]byte, 100)
			if n, err := p.ReadAt(got, off); n != 100 || err != nil || !bytes.Equal(got, data[off:off+100]) {
				t.Errorf("ReadAt(100, %d) = %d, %v (same bytes: %v)", off, n, err, bytes.Equal(got, data[off:off+100]))
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); p.Fill(context.Background()) }()
	wg.Wait()
	if err := p.Fill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := remote.asked.Load(); got != int64(len(data)) {
		t.Errorf("fetched %d bytes for a blob of %d", got, len(data))
	}
	if err := p.Verify(hashOf(data)); err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(hashOf(data[1:])); err == nil {
		t.Fatal("Verify passed a blob against another's digest")
	}
}

// Another process goes on from the chunks the first one fetched (Have),
// and asks only for the rest.
func TestPartialGoesOnFromHave(t *testing.T) {
	data := make([]byte, 4*PartialChunk)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "blob")
	f, _ := os.Create(path)
	defer f.Close()
	first, _ := NewPartial(context.Background(), f, int64(len(data)), &countingReader{Reader: bytes.NewReader(data)}, nil)
	if _, err := first.ReadAt(make([]byte, 10), 2*PartialChunk+5); err != nil {
		t.Fatal(err)
	}
	if got := first.Have(); len(got) != 1 || got[0] != [2]int{2, 3} {
		t.Fatalf("Have = %v, want [[2 3]]", got)
	}
	remote := &countingReader{Reader: bytes.NewReader(data)}
	second, err := NewPartial(context.Background(), f, int64(len(data)), remote, first.Have())
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Fill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := remote.asked.Load(); got != 3*PartialChunk {
		t.Errorf("the second fetched %d bytes, want the 3 chunks it lacked", got)
	}
	if err := second.Verify(hashOf(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewPartial(context.Background(), f, int64(len(data)), remote, [][2]int{{3, 9}}); err == nil {
		t.Fatal("NewPartial took chunks past the blob's end")
	}
}

// A remote that fails fails the read that needed it, leaves the chunk
// missing rather than half there, and a later read fetches it again.
func TestPartialFailedFetchIsRetriedLater(t *testing.T) {
	data := make([]byte, 2*PartialChunk)
	rand.Read(data)
	remote := &countingReader{Reader: bytes.NewReader(data)}
	f, _ := os.Create(filepath.Join(t.TempDir(), "blob"))
	defer f.Close()
	p, _ := NewPartial(context.Background(), f, int64(len(data)), remote, nil)
	p.patience = time.Second
	remote.fail.Store(true)
	if _, err := p.ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("a read succeeded with the remote failing")
	}
	if err := p.Verify(hashOf(data)); err == nil {
		t.Fatal("Verify passed a blob not all there")
	}
	remote.fail.Store(false)
	got := make([]byte, 10)
	if _, err := p.ReadAt(got, 0); err != nil || !bytes.Equal(got, data[:10]) {
		t.Fatalf("read after the remote came back: %v", err)
	}
}

// A remote down for a moment only delays the read that needs it: the
// reader waits (fetchPatience), rather than fail a process's page fault.
func TestPartialWaitsForARemoteThatComesBack(t *testing.T) {
	data := make([]byte, 2*PartialChunk)
	rand.Read(data)
	remote := &countingReader{Reader: bytes.NewReader(data)}
	f, _ := os.Create(filepath.Join(t.TempDir(), "blob"))
	defer f.Close()
	p, _ := NewPartial(context.Background(), f, int64(len(data)), remote, nil)
	remote.fail.Store(true)
	time.AfterFunc(time.Second, func() { remote.fail.Store(false) })
	got := make([]byte, 10)
	if _, err := p.ReadAt(got, PartialChunk); err != nil || !bytes.Equal(got, data[PartialChunk:PartialChunk+10]) {
		t.Fatalf("read across a second of remote failures: %v", err)
	}
}
