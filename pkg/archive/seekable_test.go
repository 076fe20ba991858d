package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// indexedArchive writes a zstd archive with a captured pages image and a
// written one, and returns its path, the pages and the write's stats.
func indexedArchive(t *testing.T) (string, []byte, *WriteStats) {
	t.Helper()
	dir := t.TempDir()
	pages := pageLike(t, 3*frameSize+12345)
	writeFile(t, filepath.Join(dir, ConfigDump), []byte(`{"id":"x"}`))
	writeFile(t, filepath.Join(dir, SpecDump), []byte(`{}`))
	writeFile(t, filepath.Join(dir, CheckpointDir, "inventory.img"), []byte("inv"))
	writeFile(t, filepath.Join(dir, CheckpointDir, "core-1.img"), pageLike(t, 5000))
	writeFile(t, filepath.Join(dir, CheckpointDir, "pages-1.img"), nil)
	writeFile(t, filepath.Join(dir, CheckpointDir, "pages-2.img"), pageLike(t, frameSize+99))
	m, err := Capture("checkpoint/pages-1.img", bytes.NewReader(pages), filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "a.tar.zst")
	st, err := WriteFile(dest, Contents{Dir: dir, Members: Members, Captured: []*Captured{m}}, WriteOptions{Compression: Zstd})
	if err != nil {
		t.Fatal(err)
	}
	return dest, pages, st
}

func openSeekable(t *testing.T, path, digest string) (*Seekable, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	return OpenSeekable(f, fi.Size(), digest)
}

// The index lets a reader reach every byte of the tar stream, and the
// stream it gives is the one every zstd reader decompresses.
func TestSeekableReadsTheTarStream(t *testing.T) {
	dest, pages, st := indexedArchive(t)
	if st.IndexDigest == "" {
		t.Fatal("a zstd archive was written without an index digest")
	}
	s, err := openSeekable(t, dest, st.IndexDigest)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := Open(dest, ReadOptions{Digest: st.Digest})
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s.Size() != int64(len(want)) {
		t.Fatalf("index says the tar is %d bytes, the stream is %d", s.Size(), len(want))
	}
	got := make([]byte, len(want))
	// Odd reads that straddle frames, backwards.
	for off := int64(len(got)); off > 0; {
		n := min(off, 1<<20+7)
		off -= n
		if _, err := s.ReadAt(got[off:off+n], off); err != nil {
			t.Fatalf("ReadAt %d+%d: %v", off, n, err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the seekable reader's stream differs from the decompressed one")
	}

	work := t.TempDir()
	d, spans, err := ExtractExcept(context.Background(), s, work, ReadOptions{}, func(name string) bool {
		return strings.HasPrefix(name, "checkpoint/pages-")
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(string(d), "checkpoint", "pages-1.img")); !os.IsNotExist(err) {
		t.Fatalf("a skipped member was written: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(string(d), "checkpoint", "inventory.img")); string(b) != "inv" {
		t.Fatalf("inventory.img = %q", b)
	}
	sp, ok := spans["checkpoint/pages-1.img"]
	if !ok || sp.Size != int64(len(pages)) || len(spans) != 2 {
		t.Fatalf("spans %v", spans)
	}
	back := make([]byte, sp.Size)
	if _, err := s.ReadAt(back, sp.Offset); err != nil || !bytes.Equal(back, pages) {
		t.Fatalf("pages-1.img read at its span differs (%v)", err)
	}
	out, err := os.Create(filepath.Join(t.TempDir(), "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := s.CopyMember(context.Background(), out, sp); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out.Name()); !bytes.Equal(b, pages) {
		t.Fatal("CopyMember wrote a different pages-1.img")
	}

	if _, err := exec.LookPath("zstd"); err == nil {
		out, err := exec.Command("zstd", "-dc", dest).Output()
		if err != nil || !bytes.Equal(out, want) {
			t.Fatalf("zstd does not read an indexed archive as stasis does: %v", err)
		}
	}
}

// A frame altered in the file is refused when read, and an index that is
// not the recorded one is refused when opened.
func TestSeekableRefusesAlteredFramesAndIndexes(t *testing.T) {
	dest, _, st := indexedArchive(t)
	if _, err := openSeekable(t, dest, "sha256:"+strings.Repeat("0", 64)); !errors.Is(err, ErrIndexDigest) {
		t.Fatalf("an index with another digest was opened: %v", err)
	}
	b, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40 // inside the captured pages
	if err := os.WriteFile(dest, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openSeekable(t, dest, st.IndexDigest)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, io.NewSectionReader(s, 0, s.Size()))
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("an altered frame was read: %v", err)
	}

	// A table whose sizes disagree with the file is refused when opened:
	// the last frame one byte longer than it is, then a frame claiming
	// more than a reader may allocate.
	lastCompressed := len(b) - seekFooter - 8
	for _, bad := range []func([]byte){
		func(b []byte) {
			binary.LittleEndian.PutUint32(b[lastCompressed:], binary.LittleEndian.Uint32(b[lastCompressed:])+1)
		},
		func(b []byte) { binary.LittleEndian.PutUint32(b[lastCompressed+4:], maxFrameSize+1) },
	} {
		c := append([]byte{}, b...)
		bad(c)
		if err := os.WriteFile(dest, c, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := openSeekable(t, dest, ""); !errors.Is(err, ErrInvalid) {
			t.Errorf("a table that disagrees with the file was opened: %v", err)
		}
	}
}

// Archives that cannot be reached frame by frame say so.
func TestNoIndexWithoutZstdOrWithEncryption(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, ConfigDump), []byte(`{}`))
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]WriteOptions{
		"gzip":      {Compression: Gzip},
		"none":      {Compression: None},
		"encrypted": {Compression: Zstd, Recipients: []age.Recipient{id.Recipient()}},
	} {
		dest := filepath.Join(t.TempDir(), "a")
		st, err := WriteFile(dest, Contents{Dir: dir, Members: Members}, o)
		if err != nil {
			t.Fatal(err)
		}
		if st.IndexDigest != "" {
			t.Errorf("%s: index digest %s", name, st.IndexDigest)
		}
		if _, err := openSeekable(t, dest, ""); !errors.Is(err, ErrNoIndex) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Another tool's zstd seekable archive (a seek table, with or without
// checksums, but no frame digests) has no index of stasis': a restore
// unpacks it whole rather than refuse it.
func TestForeignSeekTableIsNoIndex(t *testing.T) {
	frame := compressed(t, []byte("some tar bytes"), Zstd)
	for _, descriptor := range []byte{0, 0x80} {
		b := append([]byte{}, frame...)
		b = binary.LittleEndian.AppendUint32(b, seekTableMagic)
		entry := 8
		if descriptor != 0 {
			entry = 12
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(entry+seekFooter))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(frame)))
		b = binary.LittleEndian.AppendUint32(b, 14)
		if descriptor != 0 {
			b = binary.LittleEndian.AppendUint32(b, 0xdeadbeef)
		}
		b = binary.LittleEndian.AppendUint32(b, 1)
		b = append(b, descriptor)
		b = binary.LittleEndian.AppendUint32(b, seekableMagic)
		if _, err := OpenSeekable(bytes.NewReader(b), int64(len(b)), ""); !errors.Is(err, ErrNoIndex) {
			t.Errorf("descriptor %#x: %v", descriptor, err)
		}
	}
}

// A pages image whose header claims more than the stream holds is not
// located as a span a reader would trust (CopyMember would index past the
// frames): the unpacking refuses the archive as truncated.
func TestExtractExceptRefusesASpanPastTheEnd(t *testing.T) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, name := range []string{ConfigDump, SpecDump} {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: 2})
		tw.Write([]byte("{}"))
	}
	tw.WriteHeader(&tar.Header{Name: CheckpointDir + "/", Typeflag: tar.TypeDir, Mode: 0o700})
	tw.Flush()
	var hdr bytes.Buffer
	tar.NewWriter(&hdr).WriteHeader(&tar.Header{Name: CheckpointDir + "/pages-1.img", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1 << 20})
	b := append(append(tb.Bytes(), hdr.Bytes()[:512]...), make([]byte, 512)...)
	arch := indexed(t, b)
	s, err := OpenSeekable(bytes.NewReader(arch), int64(len(arch)), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ExtractExcept(context.Background(), s, t.TempDir(), ReadOptions{}, func(string) bool { return true }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a member past the end was located: %v", err)
	}
}
