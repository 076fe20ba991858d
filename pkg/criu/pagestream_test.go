package criu

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The writer stands in for CRIU: it opens pages-1.img as CRIU does
// (O_WRONLY|O_CREAT|O_TRUNC) and writes; pages-2.img it never opens.
func writeLikeCRIU(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Error(err)
	}
}

func TestStreamPagesDeliversWhatCRIUWritesAndReleasesTheRest(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	got := map[string][]byte{}
	ps, err := StreamPages(dir, 2, func(name string, r io.Reader) error {
		b, err := io.ReadAll(r)
		mu.Lock()
		got[name] = b
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("page"), 3<<20) // larger than any FIFO buffer
	writeLikeCRIU(t, filepath.Join(dir, "pages-1.img"), data)
	done := make(chan error)
	go func() { done <- ps.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not release the FIFO nobody opened")
	}
	if !bytes.Equal(got["pages-1.img"], data) {
		t.Fatalf("pages-1.img: got %d bytes, want %d", len(got["pages-1.img"]), len(data))
	}
	if b, ok := got["pages-2.img"]; !ok || len(b) != 0 {
		t.Fatalf("pages-2.img: want an empty capture, got %d bytes (present %v)", len(b), ok)
	}
}

// A consumer that fails must not leave CRIU blocked with the tasks frozen.
func TestStreamPagesFailingConsumerStillDrains(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("disk full")
	ps, err := StreamPages(dir, 1, func(string, io.Reader) error { return boom })
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		writeLikeCRIU(t, filepath.Join(dir, "pages-1.img"), make([]byte, 8<<20))
		close(wrote)
	}()
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer stayed blocked after the consumer failed")
	}
	if err := ps.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close returned %v, want the consumer's error", err)
	}
}
