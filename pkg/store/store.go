// Package store keeps checkpoint archives where stasis can find them again:
// one directory per checkpoint holding the archive and its metadata. The
// directory may be local disk or any network mount.
package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/stasis-dev/stasis/pkg/flock"
)

// ErrNotFound is returned when no checkpoint matches.
var ErrNotFound = errors.New("checkpoint not found")

// Entry describes one stored checkpoint.
type Entry struct {
	ID            string    `json:"id"`
	ContainerID   string    `json:"containerID"`
	ContainerName string    `json:"containerName"`
	Image         string    `json:"image"`
	Created       time.Time `json:"created"`
	Size          int64     `json:"size"`
	Digest        string    `json:"digest"`
	// IndexDigest is the sha256 of the archive's frame index (zstd
	// archives): trusting it, a lazy restore reads the pages where they
	// lie without hashing the whole archive first.
	IndexDigest string `json:"indexDigest,omitempty"`
	Compression string `json:"compression"`
	// Summary is what the checkpoint held, for a history to compare.
	Summary *Summary `json:"summary,omitempty"`
	// Archive is the archive's path; filled in when read, not stored.
	Archive string `json:"-"`
	// RootfsDiff, when set, is the rootfs diff kept beside the archive
	// instead of in it: shared, by hard link, by every entry with the same
	// diff (a timeline whose files do not change stores it once). On Put
	// it names the file to share; on Get, where it is.
	RootfsDiff string `json:"-"`
}

// Summary is a checkpoint in a few figures.
type Summary struct {
	Processes    int    `json:"processes"`
	MemoryBytes  int64  `json:"memory_bytes"`
	RootfsDigest string `json:"rootfs_digest,omitempty"`
}

const (
	rootfsFile = "rootfs-diff.tar"
	// sharedDir holds one copy of each shared rootfs diff, by digest.
	sharedDir = ".rootfs"
)

// Store is where checkpoints are kept. Dir is the only backend today; the
// interface is what the engine depends on.
type Store interface {
	// Put stores a checkpoint: write must produce the archive at the path it
	// is given and say what it wrote. Nothing is listed until Put has
	// succeeded.
	Put(e Entry, archiveName string, write func(path string) (Written, error)) (*Entry, error)
	List() ([]*Entry, error)
	Get(id string) (*Entry, error)
	Delete(id string) error
}

// Written is what writing a checkpoint's archive produced.
type Written struct {
	Size                int64
	Digest, IndexDigest string
}

// Dir stores checkpoints under a directory.
type Dir struct{ root string }

// NewDir opens (creating) a directory store.
func NewDir(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	return &Dir{root: root}, nil
}

const metaFile = "checkpoint.json"

// Put writes into a hidden directory and renames it into place when done.
func (d *Dir) Put(e Entry, archiveName string, write func(string) (Written, error)) (*Entry, error) {
	if e.ID == "" {
		e.ID = newID(e.Created)
	}
	tmp, err := os.MkdirTemp(d.root, partialPrefix)
	if err != nil {
		return nil, err
	}
	// The lock tells RemoveAbandoned that a writer still works here.
	lock, err := flock.Lock(filepath.Join(tmp, ".lock"))
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	defer lock.Close()
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	w, err := write(filepath.Join(tmp, archiveName))
	if err != nil {
		return nil, err
	}
	e.Size, e.Digest, e.IndexDigest = w.Size, w.Digest, w.IndexDigest
	if e.RootfsDiff != "" {
		if err := d.share(e.RootfsDiff, filepath.Join(tmp, rootfsFile)); err != nil {
			return nil, err
		}
		e.RootfsDiff = ""
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, metaFile), b, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(d.root, e.ID)); err != nil {
		return nil, err
	}
	ok = true
	return d.Get(e.ID)
}

// share hard-links src into dest by way of the shared copy with the same
// content, creating it when it is new.
func (d *Dir) share(src, dest string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return err
	}
	pool := filepath.Join(d.root, sharedDir)
	if err := os.MkdirAll(pool, 0o700); err != nil {
		return err
	}
	shared := filepath.Join(pool, hex.EncodeToString(h.Sum(nil))+".tar")
	if _, err := os.Stat(shared); os.IsNotExist(err) {
		if err := os.Link(src, shared); err != nil && !os.IsExist(err) {
			return fmt.Errorf("share rootfs diff: %w", err)
		}
	}
	return os.Link(shared, dest)
}

const partialPrefix = ".partial-"

// RemoveAbandoned removes entries a writer that died left half made, and
// says which.
func (d *Dir) RemoveAbandoned() []string {
	var did []string
	ents, _ := os.ReadDir(d.root)
	for _, de := range ents {
		if !de.IsDir() || !strings.HasPrefix(de.Name(), partialPrefix) {
			continue
		}
		p := filepath.Join(d.root, de.Name())
		if flock.Free(filepath.Join(p, ".lock")) {
			os.RemoveAll(p)
			did = append(did, "removed "+p)
		}
	}
	return did
}

// List returns all checkpoints, oldest first.
func (d *Dir) List() ([]*Entry, error) {
	ents, err := os.ReadDir(d.root)
	if err != nil {
		return nil, err
	}
	var out []*Entry
	for _, de := range ents {
		if !de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		e, err := d.Get(de.Name())
		if err != nil {
			continue // a directory that is not a checkpoint is not ours to judge
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Get reads one checkpoint's metadata.
func (d *Dir) Get(id string) (*Entry, error) {
	if id == "" || strings.ContainsAny(id, "/\\") || strings.HasPrefix(id, ".") {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	dir := filepath.Join(d.root, id)
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "checkpoint.tar*"))
	if len(files) != 1 {
		return nil, fmt.Errorf("checkpoint %s: archive missing", id)
	}
	e.Archive = files[0]
	if _, err := os.Stat(filepath.Join(dir, rootfsFile)); err == nil {
		e.RootfsDiff = filepath.Join(dir, rootfsFile)
	}
	return &e, nil
}

// Delete removes a checkpoint, and a shared rootfs diff no other
// checkpoint links to.
func (d *Dir) Delete(id string) error {
	if _, err := d.Get(id); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(d.root, id)); err != nil {
		return err
	}
	pool, _ := filepath.Glob(filepath.Join(d.root, sharedDir, "*.tar"))
	for _, p := range pool {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil && st.Nlink == 1 {
			os.Remove(p)
		}
	}
	return nil
}

// Latest returns the newest checkpoint whose container matches nameOrID.
func Latest(s Store, nameOrID string) (*Entry, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].ContainerName == nameOrID || all[i].ContainerID == nameOrID {
			return all[i], nil
		}
	}
	return nil, fmt.Errorf("%w for container %s", ErrNotFound, nameOrID)
}

func newID(t time.Time) string {
	b := make([]byte, 4)
	rand.Read(b)
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}
