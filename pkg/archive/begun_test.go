package archive

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A begun archive takes its pages as they stream, the other members at the
// end, and is an archive like any other: every zstd and tar tool reads it,
// its digest is its bytes', its index checks every frame, rewritten
// headers included.
func TestBegunArchiveStreamsPagesThenTheRest(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, ConfigDump), []byte(`{"id":"x"}`))
	writeFile(t, filepath.Join(dir, SpecDump), []byte(`{}`))
	writeFile(t, filepath.Join(dir, CheckpointDir, "inventory.img"), []byte("inv"))
	big := pageLike(t, 3*frameSize+12345)
	small := pageLike(t, 777)
	spooled := pageLike(t, frameSize+1)
	// FIFOs in the real dump; here placeholders the writer passes over.
	for _, n := range []string{"pages-1.img", "pages-2.img", "pages-3.img"} {
		writeFile(t, filepath.Join(dir, CheckpointDir, n), nil)
	}
	dest := filepath.Join(t.TempDir(), "a.tar.zst")
	b, err := Begin(filepath.Dir(dest))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Stream("checkpoint/pages-1.img", bytes.NewReader(big), time.Second); !ok || err != nil {
		t.Fatalf("Stream = %v, %v", ok, err)
	}
	// While a member streams in, another waits its turn or goes elsewhere.
	held, release, streamed := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(streamed)
		b.Stream("checkpoint/pages-2.img", io.MultiReader(bytes.NewReader(small[:100]), readerFunc(func(p []byte) (int, error) {
			close(held)
			<-release
			return copy(p, small[100:]), io.EOF
		})), time.Second)
	}()
	<-held
	if ok, _ := b.Stream("checkpoint/pages-3.img", bytes.NewReader(spooled), 50*time.Millisecond); ok {
		t.Fatal("a second member streamed in while the first was")
	}
	close(release)
	<-streamed
	m, err := Capture("checkpoint/pages-3.img", bytes.NewReader(spooled), filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.Finish(dest, Contents{Dir: dir, Members: Members, Captured: []*Captured{m}})
	if err != nil {
		t.Fatal(err)
	}
	checkBegun(t, dest, st, map[string][]byte{
		"checkpoint/pages-1.img": big, "checkpoint/pages-2.img": small, "checkpoint/pages-3.img": spooled,
		"checkpoint/inventory.img": []byte("inv"), ConfigDump: []byte(`{"id":"x"}`),
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func checkBegun(t *testing.T, dest string, st *WriteStats, want map[string][]byte) {
	t.Helper()
	raw, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	if st.Digest != "sha256:"+hex.EncodeToString(sum[:]) || st.Bytes != int64(len(raw)) {
		t.Fatalf("stats say %s, %d bytes; the file is sha256:%x, %d bytes", st.Digest, st.Bytes, sum, len(raw))
	}
	out, err := exec.Command("tar", "--zstd", "-tvf", dest).CombinedOutput()
	if err != nil {
		t.Fatalf("tar cannot list the begun archive: %v\n%s", err, out)
	}
	got := readMembers(t, dest)
	for name, w := range want {
		if !bytes.Equal(got[name], w) {
			t.Errorf("member %s: %d bytes, want %d", name, len(got[name]), len(w))
		}
	}
	s, err := openSeekable(t, dest, st.IndexDigest)
	if err != nil {
		t.Fatalf("the index does not check: %v", err)
	}
	all := make([]byte, s.Size())
	if _, err := s.ReadAt(all, 0); err != nil {
		t.Fatalf("reading every frame through the index: %v", err)
	}
	if _, err := Extract(t.Context(), dest, t.TempDir(), ReadOptions{Digest: st.Digest}); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	// The metadata comes after the pages; the index skips them.
	if cfg, spec, err := ReadMetadata(dest); err != nil || cfg == nil || spec == nil {
		t.Fatalf("ReadMetadata: %v, %v, %v", cfg, spec, err)
	}
}

// An aborted archive leaves nothing; a failed stream fails Finish.
func TestBegunArchiveAbortedOrBroken(t *testing.T) {
	dir := t.TempDir()
	b, err := Begin(dir)
	if err != nil {
		t.Fatal(err)
	}
	b.Abort()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("an aborted archive left %v", ents)
	}
	b, _ = Begin(dir)
	broken := io.MultiReader(bytes.NewReader(pageLike(t, 5000)), readerFunc(func([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }))
	if ok, err := b.Stream("checkpoint/pages-1.img", broken, time.Second); !ok || err == nil {
		t.Fatalf("a broken stream: %v, %v", ok, err)
	}
	if _, err := b.Finish(filepath.Join(dir, "a.tar.zst"), Contents{Dir: t.TempDir()}); err == nil {
		t.Fatal("Finish succeeded after a broken stream")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a failed archive left %v", ents)
	}
}

// Begun where its destination's filesystem is not (a store on another
// mount), the archive is copied there, and nothing is left where it began.
func TestBegunArchiveAcrossFilesystems(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "stasis-begun-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	defer os.RemoveAll(shm)
	destDir := t.TempDir()
	var a, b syscall.Stat_t
	if syscall.Stat(shm, &a) != nil || syscall.Stat(destDir, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm and the test's temporary directory are one filesystem")
	}
	bg, err := Begin(shm)
	if err != nil {
		t.Fatal(err)
	}
	pages := pageLike(t, 3*frameSize)
	if ok, err := bg.Stream("checkpoint/pages-1.img", bytes.NewReader(pages), time.Second); !ok || err != nil {
		t.Fatalf("Stream = %v, %v", ok, err)
	}
	dest := filepath.Join(destDir, "a.tar.zst")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, ConfigDump), []byte(`{"id":"x"}`))
	writeFile(t, filepath.Join(dir, SpecDump), []byte(`{}`))
	writeFile(t, filepath.Join(dir, CheckpointDir, "inventory.img"), []byte("inv"))
	st, err := bg.Finish(dest, Contents{Dir: dir, Members: Members})
	if err != nil {
		t.Fatal(err)
	}
	checkBegun(t, dest, st, map[string][]byte{"checkpoint/pages-1.img": pages})
	if ents, _ := os.ReadDir(shm); len(ents) != 0 {
		t.Fatalf("the archive copied elsewhere left %v where it began", ents)
	}
	if ents, _ := os.ReadDir(destDir); len(ents) != 1 {
		t.Fatalf("beside the archive: %v", ents)
	}
}
