package archive

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pageLike is data shaped like a JVM heap: mostly zeros with a byte set
// every 64, plus an incompressible stretch, and a length that is not a
// multiple of the frame size or of tar's 512-byte blocks.
func pageLike(t *testing.T, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 64 {
		b[i] = byte(i / 64)
	}
	if _, err := rand.Read(b[n/3 : n/3+n/10]); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// readMembers reads an archive back with stasis' own reader.
func readMembers(t *testing.T, path string) map[string][]byte {
	t.Helper()
	r, c, err := Open(path, ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if c != Zstd {
		t.Fatalf("compression sniffed as %s", c)
	}
	got := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = b
	}
}

// A captured member is spliced into the stream as frames compressed
// earlier; the result must be one archive that stasis and the reference
// zstd and tar tools read back byte for byte, members in order.
func TestCapturedMemberSplicedIntoZstdArchive(t *testing.T) {
	dir := t.TempDir()
	pages := pageLike(t, 3*frameSize+12345)
	small := []byte(`{"id":"x"}`)
	writeFile(t, filepath.Join(dir, ConfigDump), small)
	writeFile(t, filepath.Join(dir, CheckpointDir, "core-1.img"), pageLike(t, 5000))
	writeFile(t, filepath.Join(dir, CheckpointDir, "pagemap-1.img"), []byte("pm"))
	// The file CRIU would have written stays a placeholder; the capture wins.
	writeFile(t, filepath.Join(dir, CheckpointDir, "pages-1.img"), nil)
	m, err := Capture("checkpoint/pages-1.img", bytes.NewReader(pages), filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != int64(len(pages)) {
		t.Fatalf("captured %d bytes, want %d", m.Size, len(pages))
	}
	dest := filepath.Join(t.TempDir(), "a.tar.zst")
	st, err := WriteFile(dest, Contents{Dir: dir, Members: Members, Captured: []*Captured{m}}, WriteOptions{Compression: Zstd})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dest); fi.Size() != st.Bytes || fi.Size() >= int64(len(pages))/2 {
		t.Fatalf("archive is %d bytes, stats say %d, pages %d", fi.Size(), st.Bytes, len(pages))
	}
	got := readMembers(t, dest)
	if !bytes.Equal(got["checkpoint/pages-1.img"], pages) {
		t.Fatalf("pages-1.img differs after the round trip (%d bytes back)", len(got["checkpoint/pages-1.img"]))
	}
	if !bytes.Equal(got[ConfigDump], small) || string(got["checkpoint/pagemap-1.img"]) != "pm" {
		t.Fatalf("small members differ: %q %q", got[ConfigDump], got["checkpoint/pagemap-1.img"])
	}
	for _, tool := range []string{"zstd", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	out := t.TempDir()
	if b, err := exec.Command("tar", "--zstd", "-xf", dest, "-C", out).CombinedOutput(); err != nil {
		t.Fatalf("GNU tar cannot read the archive: %v: %s", err, b)
	}
	back, err := os.ReadFile(filepath.Join(out, "checkpoint", "pages-1.img"))
	if err != nil || !bytes.Equal(back, pages) {
		t.Fatalf("GNU tar extracted a different pages-1.img (%v)", err)
	}
}

func TestCapturedMemberWithoutFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, ConfigDump), []byte("{}"))
	m, err := Capture("checkpoint/pages-9.img", bytes.NewReader([]byte("x")), filepath.Join(dir, "spool"))
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "a.tar.zst")
	if _, err := WriteFile(dest, Contents{Dir: dir, Members: Members, Captured: []*Captured{m}}, WriteOptions{Compression: Zstd}); err == nil {
		t.Fatal("an archive missing a captured member was written")
	}
	if _, err := WriteFile(dest, Contents{Dir: dir, Members: Members, Captured: []*Captured{m}}, WriteOptions{Compression: Gzip}); err == nil {
		t.Fatal("a captured member was accepted into a gzip archive")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), "*")); len(left) != 0 {
		t.Fatalf("failed writes left %v", left)
	}
}

// Every compression reads back to the same members.
func TestRoundTripEachCompression(t *testing.T) {
	dir := t.TempDir()
	data := pageLike(t, frameSize+777)
	writeFile(t, filepath.Join(dir, CheckpointDir, "pages-1.img"), data)
	for _, c := range []Compression{Zstd, Gzip, None} {
		dest := filepath.Join(t.TempDir(), "a.tar")
		if _, err := WriteFile(dest, Contents{Dir: dir, Members: Members}, WriteOptions{Compression: c}); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		r, got, err := Open(dest, ReadOptions{})
		if err != nil || got != c {
			t.Fatalf("%s: opened as %s: %v", c, got, err)
		}
		tr := tar.NewReader(r)
		var back []byte
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", c, err)
			}
			if h.Name == "checkpoint/pages-1.img" {
				back, _ = io.ReadAll(tr)
			}
		}
		r.Close()
		if !bytes.Equal(back, data) {
			t.Fatalf("%s: pages differ after the round trip", c)
		}
	}
}
