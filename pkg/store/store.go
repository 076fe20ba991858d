// Package store keeps checkpoint archives where stasis can find them again:
// one directory per checkpoint holding the archive and its metadata. The
// directory may be local disk or any network mount.
package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
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
	Compression   string    `json:"compression"`
	// Archive is the archive's path; filled in when read, not stored.
	Archive string `json:"-"`
}

// Store is where checkpoints are kept. Dir is the only backend today; the
// interface is what the engine depends on.
type Store interface {
	// Put stores a checkpoint: write must produce the archive at the path it
	// is given and return its size and digest. Nothing is listed until Put
	// has succeeded.
	Put(e Entry, archiveName string, write func(path string) (size int64, digest string, err error)) (*Entry, error)
	List() ([]*Entry, error)
	Get(id string) (*Entry, error)
	Delete(id string) error
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
func (d *Dir) Put(e Entry, archiveName string, write func(string) (int64, string, error)) (*Entry, error) {
	if e.ID == "" {
		e.ID = newID(e.Created)
	}
	tmp, err := os.MkdirTemp(d.root, ".partial-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	size, digest, err := write(filepath.Join(tmp, archiveName))
	if err != nil {
		return nil, err
	}
	e.Size, e.Digest = size, digest
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
	return &e, nil
}

// Delete removes a checkpoint.
func (d *Dir) Delete(id string) error {
	if _, err := d.Get(id); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(d.root, id))
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
