package image

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

func blobCount(t *testing.T, s *Store) int {
	ents, err := os.ReadDir(filepath.Join(s.layoutDir(), "blobs", "sha256"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(ents)
}

func TestAddRemoveCollectsBlobs(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	empty := blobCount(t, s)
	a, _ := random.Image(1024, 2)
	b, _ := random.Image(1024, 1)
	if _, err := s.Add("a:1", a, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add("b:1", b, nil); err != nil {
		t.Fatal(err)
	}
	i, err := s.Get("a:1")
	if err != nil || i.Name != "localhost/a:1" || len(i.layers) != 2 {
		t.Fatalf("get a:1: %+v %v", i, err)
	}
	if err := s.Remove("a:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("a:1"); err == nil {
		t.Fatal("a:1 still there")
	}
	// b's manifest, config and layer remain; a's are gone.
	if n := blobCount(t, s); n != empty+3 {
		t.Fatalf("%d blobs after removing a, want %d", n, empty+3)
	}
}

// corruptLayer claims one digest and delivers other bytes, as a tampered
// or broken registry would.
type corruptLayer struct{ v1.Layer }

func (l corruptLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(rc)
	b[len(b)/2] ^= 0xff
	return io.NopCloser(bytes.NewReader(b)), nil
}

func TestAddRefusesAndForgetsACorruptLayer(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// The first layer is fetched fine; the second fails and takes the
	// first with it.
	bad, _ := random.Image(4096, 1)
	l, _ := random.Layer(4096, "application/vnd.oci.image.layer.v1.tar+gzip")
	bad, err = mutate.AppendLayers(bad, corruptLayer{l})
	if err != nil {
		t.Fatal(err)
	}
	before := blobCount(t, s)
	_, err = s.Add("bad:1", bad, nil)
	if err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("Add of a corrupt layer: %v", err)
	}
	if n := blobCount(t, s); n != before {
		t.Fatalf("a failed Add left %d blobs (had %d)", n, before)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("a failed Add listed %v", list)
	}
}

func TestRepository(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                        "localhost/busybox",
		"127.0.0.1:5000/ckpt/web:v1":     "127.0.0.1:5000/ckpt/web",
		"127.0.0.1:5000/ckpt/web":        "127.0.0.1:5000/ckpt/web",
		"r.example/a/b@sha256:00":        "r.example/a/b",
		"r.example/a/b:t@sha256:00":      "r.example/a/b",
		"localhost/stasis/ns/n-1234:app": "localhost/stasis/ns/n-1234",
		"r.example/c:sha256-abcd.sig":    "r.example/c",
	} {
		if got := Repository(in); got != want {
			t.Errorf("Repository(%q) = %q, want %q", in, got, want)
		}
	}
}

// Readers in other processes (the CLI, stasis-runc, the agent share one
// store) see the store whole while a writer rewrites its index, which the
// OCI layout does in place. The lock is flock(2), per open file, so
// goroutines stand in for the processes.
func TestReadersNeverSeeAHalfWrittenIndex(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	keep, _ := random.Image(1024, 1)
	if _, err := w.Add("keep:1", keep, nil); err != nil {
		t.Fatal(err)
	}
	churn, _ := random.Image(1024, 1)
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 200; i++ {
			if _, err := w.Add("churn:1", churn, nil); err != nil {
				done <- err
				return
			}
			if err := w.Remove("churn:1"); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return
		default:
		}
		i, err := r.Get("keep:1")
		if err != nil {
			t.Fatalf("while another writes: %v", err)
		}
		if _, err := r.Image(i); err != nil {
			t.Fatalf("while another writes: %v", err)
		}
	}
}
