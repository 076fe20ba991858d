package archive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
)

// Members lists what a checkpoint archive holds, in the order written:
// metadata first, so a reader can learn what it restores before the pages.
// A dump that streams its pages into the archive (Begun) writes them first,
// and the index lets a reader seek past them.
var Members = []string{ConfigDump, SpecDump, DeletedFiles, StatsDump, DumpLog, RootfsDiff, CheckpointDir}

// WriteStats says where the time of writing an archive went.
type WriteStats struct {
	// Archive is time spent reading the members and framing them as tar.
	Archive time.Duration
	// Compress is time the archive waited for the compressor. zstd
	// compresses on other goroutines, so this is less than its CPU time.
	Compress time.Duration
	// Write is time spent writing and syncing the destination; with zstd
	// it overlaps the other two.
	Write  time.Duration
	Bytes  int64
	Digest string
	// IndexDigest is the sha256 of the frame index that ends a zstd
	// archive (index.go), "" when it has none (gzip, none, encrypted).
	IndexDigest string
}

// Contents is what an archive holds: the members found in Dir, where a
// Captured member stands in for the file of the same name.
type Contents struct {
	Dir      string
	Members  []string
	Captured []*Captured
}

// WriteOptions say how an archive is written.
type WriteOptions struct {
	Compression Compression
	// Recipients, when any, encrypt the archive (age, X25519): only their
	// identities can read it.
	Recipients []age.Recipient
}

// Write streams the contents as a tar, compressed and maybe encrypted, into
// w. It returns the sha256 of the bytes written to w.
func Write(w io.Writer, src Contents, o WriteOptions) (*WriteStats, error) {
	st := &WriteStats{}
	start := time.Now()
	h := sha256.New()
	out := &timedWriter{w: io.MultiWriter(w, h), d: &st.Write, n: &st.Bytes}
	var sink io.Writer = out
	var enc io.WriteCloser
	if len(o.Recipients) > 0 {
		var err error
		if enc, err = age.Encrypt(out, o.Recipients...); err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		sink = enc
	}
	c := o.Compression
	cw, err := compressor(sink, c)
	if err != nil {
		return nil, err
	}
	fw, indexed := cw.(*frameWriter)
	if indexed && enc == nil {
		// Encrypted, frames could not be reached without reading all
		// that comes before them.
		fw.index = true
	}
	closed := false
	defer func() {
		if !closed { // stops the compressor's goroutines on an error
			cw.Close()
		}
	}()
	var compressed int64
	a := &tarWriter{
		compressed: &timedWriter{w: cw, d: &st.Compress, n: &compressed},
		captured:   map[string]*Captured{},
	}
	a.tw = tar.NewWriter(a.compressed)
	if len(src.Captured) > 0 {
		if !indexed {
			return nil, fmt.Errorf("archive: captured members need zstd, not %s", c)
		}
		a.frames = fw
	}
	if err := a.addMembers(src); err != nil {
		return nil, err
	}
	closeStart := time.Now()
	closed = true
	if err := cw.Close(); err != nil {
		return nil, err
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
	}
	st.Compress += time.Since(closeStart)
	st.Archive = time.Since(start) - st.Compress
	st.Digest = digestOf(h)
	if indexed {
		st.IndexDigest = fw.indexDigest
	}
	return st, nil
}

// WriteFile writes the archive to dest atomically: to a hidden temporary
// name in the same directory, synced, then renamed. A reader never sees a
// partial archive, and a failure leaves nothing behind.
func WriteFile(dest string, src Contents, o WriteOptions) (*WriteStats, error) {
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
	st, err := Write(f, src, o)
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

// tarWriter frames members as tar. Captured members bypass tw: their
// header and padding go through the compressor like everything else, their
// data is spliced in as the frames it already is.
type tarWriter struct {
	tw         *tar.Writer
	compressed io.Writer
	frames     *frameWriter
	captured   map[string]*Captured
	// written are members already in the archive, whose files are passed
	// over.
	written map[string]bool
}

// addMembers writes src's members and ends the tar stream.
func (a *tarWriter) addMembers(src Contents) error {
	for _, m := range src.Captured {
		a.captured[m.Name] = m
	}
	for _, m := range src.Members {
		if err := a.addTree(src.Dir, m); err != nil {
			return fmt.Errorf("archive %s: %w", m, err)
		}
	}
	if len(a.captured) > 0 {
		return fmt.Errorf("archive: %d captured members have no file in %s", len(a.captured), src.Dir)
	}
	return a.tw.Close()
}

func (a *tarWriter) addCaptured(m *Captured) error {
	if err := a.tw.Flush(); err != nil { // pads the previous member
		return err
	}
	var hdr bytes.Buffer
	if err := tar.NewWriter(&hdr).WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: m.Name, Size: m.Size, Mode: 0o600, ModTime: m.ModTime,
	}); err != nil {
		return err
	}
	if _, err := a.compressed.Write(hdr.Bytes()); err != nil {
		return err
	}
	f, err := os.Open(m.spool)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := a.frames.WriteRaw(f, m.frames); err != nil {
		return err
	}
	_, err = a.compressed.Write(make([]byte, (512-m.Size%512)%512))
	return err
}

func (a *tarWriter) addTree(root, member string) error {
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
		rel, _ := filepath.Rel(root, p)
		hdr, err := FileHeader(p, rel, fi)
		if err != nil {
			return err
		}
		if m, ok := a.captured[filepath.ToSlash(rel)]; ok {
			delete(a.captured, m.Name)
			return a.addCaptured(m)
		}
		if a.written[filepath.ToSlash(rel)] {
			return nil // streamed in already (Begun)
		}
		if err := a.tw.WriteHeader(hdr); err != nil {
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
		_, err = io.Copy(a.tw, f)
		return err
	})
}

// FileHeader is the tar header of the file at p, named rel (its path from
// the root of the tree being written). The checkpoint archive's trees and
// the rootfs diff inside it are written with it so that one reader
// (untar, or another engine's) sees both framed alike.
func FileHeader(p, rel string, fi fs.FileInfo) (*tar.Header, error) {
	link := ""
	if fi.Mode()&os.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(p); err != nil {
			return nil, err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return nil, err
	}
	hdr.Name = filepath.ToSlash(rel)
	if fi.IsDir() {
		hdr.Name += "/"
	}
	// FileInfoHeader names the owner from this host's user database. The
	// numeric IDs are what the container means; a name could make a
	// reader that prefers names (GNU tar) give the file to whoever has it
	// on the restoring host, and would make the bytes depend on the
	// writer's /etc/passwd.
	hdr.Uname, hdr.Gname = "", ""
	return hdr, nil
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

func digestOf(h hash.Hash) string { return digestOfSum([32]byte(h.Sum(nil))) }

// DigestSuffix names the file beside an exported archive that records its
// sha256, in sha256sum's format, so that whoever imports it can check it
// (stasis does, on restore).
const DigestSuffix = ".sha256"

// WriteDigestFile records digest ("sha256:...") beside the archive at path,
// and the digest of its frame index when it has one, on a comment line
// (sha256sum -c passes over it).
func WriteDigestFile(path, digest, indexDigest string) error {
	hexDigest, ok := strings.CutPrefix(digest, "sha256:")
	if !ok {
		return fmt.Errorf("digest %q is not sha256", digest)
	}
	text := hexDigest + "  " + filepath.Base(path) + "\n"
	if indexDigest != "" {
		text += indexComment + indexDigest + "\n"
	}
	tmp := path + DigestSuffix + ".partial"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path+DigestSuffix)
}

// indexComment starts the line of a digest file that records the index's.
const indexComment = "# stasis frame index "

// Digests are what the file beside an archive records of it.
type Digests struct {
	// Archive is the sha256 of the whole archive, "" when none is recorded.
	Archive string
	// Index is the sha256 of its frame index, "" when none is recorded.
	Index string
}

// ReadDigestFile returns the digests recorded beside the archive at path;
// none when there is no such file.
func ReadDigestFile(path string) (Digests, error) {
	var d Digests
	b, err := os.ReadFile(path + DigestSuffix)
	if os.IsNotExist(err) {
		return d, nil
	}
	if err != nil {
		return d, err
	}
	lines := strings.Split(string(b), "\n")
	f := strings.Fields(lines[0])
	if len(f) == 0 || len(f[0]) != 64 {
		return d, fmt.Errorf("%s%s is not a sha256 digest file", path, DigestSuffix)
	}
	d.Archive = "sha256:" + f[0]
	for _, l := range lines[1:] {
		if ix, ok := strings.CutPrefix(l, indexComment); ok && strings.HasPrefix(ix, "sha256:") && len(ix) == 71 {
			d.Index = ix
		}
	}
	return d, nil
}
