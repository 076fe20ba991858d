package archive

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Members lists what a checkpoint archive holds, in the order written:
// metadata first, so a reader can learn what it restores before the pages.
var Members = []string{ConfigDump, SpecDump, DeletedFiles, StatsDump, DumpLog, RootfsDiff, CheckpointDir}

// WriteStats says where the time of writing an archive went.
type WriteStats struct {
	// Archive is time spent reading the members and framing them as tar.
	Archive time.Duration
	// Compress is time spent in the compressor.
	Compress time.Duration
	// Write is time spent writing and syncing the destination.
	Write  time.Duration
	Bytes  int64
	Digest string
}

// Write streams the members of dir that exist as a tar, compressed with c,
// into w. It returns the sha256 of the bytes written to w.
func Write(w io.Writer, dir string, members []string, c Compression) (*WriteStats, error) {
	st := &WriteStats{}
	start := time.Now()
	h := sha256.New()
	out := &timedWriter{w: io.MultiWriter(w, h), d: &st.Write, n: &st.Bytes}
	cw, err := compressor(out, c)
	if err != nil {
		return nil, err
	}
	var compressed int64
	tw := tar.NewWriter(&timedWriter{w: cw, d: &st.Compress, n: &compressed})
	for _, m := range members {
		if err := addTree(tw, dir, m); err != nil {
			return nil, fmt.Errorf("archive %s: %w", m, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	closeStart := time.Now()
	if err := cw.Close(); err != nil {
		return nil, err
	}
	st.Compress += time.Since(closeStart)
	st.Compress -= st.Write // the compressor's writes include ours
	st.Archive = time.Since(start) - st.Compress - st.Write
	st.Digest = digestOf(h)
	return st, nil
}

// WriteFile writes the archive to dest atomically: to a hidden temporary
// name in the same directory, synced, then renamed. A reader never sees a
// partial archive, and a failure leaves nothing behind.
func WriteFile(dest, dir string, members []string, c Compression) (*WriteStats, error) {
	dest, err := filepath.Abs(dest)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".partial-")
	if err != nil {
		return nil, fmt.Errorf("create archive: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	st, err := Write(f, dir, members, c)
	if err != nil {
		return nil, err
	}
	syncStart := time.Now()
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("sync archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dest); err != nil {
		return nil, err
	}
	ok = true
	if d, err := os.Open(filepath.Dir(dest)); err == nil {
		d.Sync()
		d.Close()
	}
	st.Write += time.Since(syncStart)
	return st, nil
}

func addTree(tw *tar.Writer, root, member string) error {
	top := filepath.Join(root, member)
	if _, err := os.Lstat(top); os.IsNotExist(err) {
		return nil
	}
	return filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

type timedWriter struct {
	w io.Writer
	d *time.Duration
	n *int64
}

func (t *timedWriter) Write(p []byte) (int, error) {
	s := time.Now()
	n, err := t.w.Write(p)
	*t.d += time.Since(s)
	*t.n += int64(n)
	return n, err
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }
