package engine

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// fakeTarget stands in for a container or a bundle so that the restore
// pipeline runs without root, overlay mounts or runc. It records its calls
// in order, and what each step found of the steps before it.
type fakeTarget struct {
	calls []string
	// root is what prepare returns: a directory holding /etc/old, which
	// the checkpoint deleted, and /etc/kept, which it did not touch.
	root string
	// startErr makes start fail.
	startErr error
	// name is config.dump's name as prepare read it.
	name string
	// appliedBeforeConfigure says the rootfs diff was in root when
	// configure ran.
	appliedBeforeConfigure bool
	// startOpts is what start was given, and imagesAtStart whether the
	// CRIU images were there then.
	startOpts     runc.RestoreOptions
	imagesAtStart bool
}

func newFakeTarget(t *testing.T) *fakeTarget {
	return &fakeTarget{root: filepath.Join(t.TempDir(), "root")}
}

func (f *fakeTarget) prepare(_ context.Context, _ *Engine, ck *unpacked) (string, error) {
	f.calls = append(f.calls, "prepare")
	cfg, err := ck.Config()
	if err != nil {
		return "", err
	}
	f.name = cfg.Name
	if err := os.MkdirAll(filepath.Join(f.root, "etc"), 0o755); err != nil {
		return "", err
	}
	for _, name := range []string{"old", "kept"} {
		if err := os.WriteFile(filepath.Join(f.root, "etc", name), []byte("from the image\n"), 0o644); err != nil {
			return "", err
		}
	}
	return f.root, nil
}

func (f *fakeTarget) configure(context.Context, *Engine, *unpacked) error {
	f.calls = append(f.calls, "configure")
	_, err := os.Stat(filepath.Join(f.root, "etc", "changed"))
	f.appliedBeforeConfigure = err == nil
	return nil
}

func (f *fakeTarget) start(_ context.Context, _ *Engine, _ *unpacked, o runc.RestoreOptions, _ *criu.LazyPagesServer) (int, error) {
	f.calls = append(f.calls, "start")
	f.startOpts = o
	_, err := os.Stat(filepath.Join(o.ImagePath, "inventory.img"))
	f.imagesAtStart = err == nil
	if f.startErr != nil {
		return 0, f.startErr
	}
	return 4242, nil
}

func (f *fakeTarget) abort(context.Context, *Engine) error {
	f.calls = append(f.calls, "abort")
	return nil
}

func (f *fakeTarget) close() { f.calls = append(f.calls, "close") }

func (f *fakeTarget) ignoresRootfs() bool { return false }

func (f *fakeTarget) assertCalls(t *testing.T, want ...string) {
	t.Helper()
	if !reflect.DeepEqual(f.calls, want) {
		t.Errorf("target calls %q, want %q", f.calls, want)
	}
}

// diffEntry is one entry of a hand-made rootfs diff.
type diffEntry struct {
	name, body string
	typ        byte
}

// restoreArchive writes a checkpoint archive as another engine could
// (no CRIU needed: the fake target runs none) with the given rootfs diff
// and deletion list, and its digest beside it.
func restoreArchive(t *testing.T, diff []diffEntry, deleted []string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := archive.Config{ContainerConfig: metadata.ContainerConfig{Name: "web", RootfsImageName: "reg.example/app:1", OCIRuntime: "runc"}}
	if err := archive.WriteJSON(dir, archive.ConfigDump, &cfg); err != nil {
		t.Fatal(err)
	}
	spec := specs.Spec{Process: &specs.Process{Args: []string{"/app"}}, Root: &specs.Root{Path: "rootfs"}}
	if err := archive.WriteJSON(dir, archive.SpecDump, &spec); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, archive.CheckpointDir), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range fakeImages {
		writeFile(t, filepath.Join(dir, archive.CheckpointDir, name), data)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range diff {
		// The caller's own IDs: a restore as an unprivileged user may
		// chown only to those.
		h := &tar.Header{Typeflag: d.typ, Name: d.name, Mode: 0o644, Size: int64(len(d.body)),
			Uid: os.Getuid(), Gid: os.Getgid(), ModTime: time.Unix(1700000000, 0)}
		if d.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(d.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, archive.RootfsDiff), buf.String())
	if deleted != nil {
		if err := archive.WriteJSON(dir, archive.DeletedFiles, deleted); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "web.tar.zst")
	ws, err := archive.WriteFile(out, archive.Contents{Dir: dir, Members: archive.Members}, archive.WriteOptions{Compression: archive.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	if err := archive.WriteDigestFile(out, ws.Digest, ws.IndexDigest); err != nil {
		t.Fatal(err)
	}
	return out
}

// goodDiff changes /etc/changed and deletes /etc/old.
var goodDiff = []diffEntry{{"etc/", "", tar.TypeDir}, {"etc/changed", "restored\n", tar.TypeReg}}

func resolveFile(t *testing.T, e *Engine, path string) *source {
	t.Helper()
	src, err := e.resolve(context.Background(), Ref{File: path})
	if err != nil {
		t.Fatal(err)
	}
	if src.digest == "" {
		t.Fatal("the digest beside the archive was not read")
	}
	return src
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A restore unpacks the checkpoint, replays its file changes onto the
// root the target prepared, configures the target and starts it, in that
// order, and leaves no work directory.
func TestRestorePipelineOrder(t *testing.T) {
	e := testEngine(t)
	src := resolveFile(t, e, restoreArchive(t, goodDiff, []string{"/etc/old"}))
	tg := newFakeTarget(t)

	res, err := e.restore(context.Background(), src, tg, runc.RestoreOptions{TCPEstablished: true})
	if err != nil {
		t.Fatal(err)
	}

	tg.assertCalls(t, "prepare", "configure", "start", "close")
	if tg.name != "web" {
		t.Errorf("prepare read config.dump's name %q", tg.name)
	}
	if !tg.appliedBeforeConfigure {
		t.Error("configure ran before the rootfs diff was applied")
	}
	if got := readString(t, filepath.Join(tg.root, "etc", "changed")); got != "restored\n" {
		t.Errorf("/etc/changed holds %q", got)
	}
	if _, err := os.Lstat(filepath.Join(tg.root, "etc", "old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/etc/old, deleted in the checkpoint, is still there: %v", err)
	}
	if got := readString(t, filepath.Join(tg.root, "etc", "kept")); got != "from the image\n" {
		t.Errorf("/etc/kept holds %q", got)
	}
	o := tg.startOpts
	if !tg.imagesAtStart || o.WorkPath != filepath.Dir(o.ImagePath) || !o.TCPEstablished || o.LazyPages {
		t.Errorf("start got %+v (images there: %v)", o, tg.imagesAtStart)
	}
	if res.Pid != 4242 {
		t.Errorf("pid %d", res.Pid)
	}
	for _, p := range []string{"extract", "prepare", "rootfs", "criu_restore"} {
		if _, ok := res.Phases[p]; !ok {
			t.Errorf("no phase %q in %v", p, res.Phases)
		}
	}
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// When runc restore fails the target undoes what it did, then lets go of
// what it holds, and the work directory goes.
func TestRestorePipelineStartFails(t *testing.T) {
	e := testEngine(t)
	src := resolveFile(t, e, restoreArchive(t, goodDiff, nil))
	tg := newFakeTarget(t)
	tg.startErr = errors.New("runc restore: exit status 1")

	_, err := e.restore(context.Background(), src, tg, runc.RestoreOptions{})
	if !errors.Is(err, tg.startErr) {
		t.Fatalf("error %v, want the start's", err)
	}
	tg.assertCalls(t, "prepare", "configure", "start", "abort", "close")
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// A deletion list that climbs out of the root is refused before the
// target is touched.
func TestRestorePipelineRefusesUnsafeDeleted(t *testing.T) {
	e := testEngine(t)
	src := resolveFile(t, e, restoreArchive(t, goodDiff, []string{"/etc/old", "../../etc/passwd"}))
	tg := newFakeTarget(t)

	_, err := e.restore(context.Background(), src, tg, runc.RestoreOptions{})
	if !errors.Is(err, untar.ErrUnsafePath) {
		t.Fatalf("error %v, want ErrUnsafePath", err)
	}
	tg.assertCalls(t, "close")
	if _, err := os.Stat(tg.root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the target's root was made: %v", err)
	}
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// A rootfs diff with an entry that climbs out of the root is refused as
// an invalid archive once the target is prepared: the target undoes that,
// nothing lands outside the root, and it is never configured or started.
func TestRestorePipelineUnsafeDiffAborts(t *testing.T) {
	e := testEngine(t)
	src := resolveFile(t, e, restoreArchive(t, []diffEntry{{"../escaped", "x", tar.TypeReg}}, nil))
	tg := newFakeTarget(t)

	_, err := e.restore(context.Background(), src, tg, runc.RestoreOptions{})
	if !errors.Is(err, archive.ErrInvalid) || !errors.Is(err, untar.ErrUnsafePath) {
		t.Fatalf("error %v, want ErrInvalid and ErrUnsafePath", err)
	}
	tg.assertCalls(t, "prepare", "abort", "close")
	if _, err := os.Lstat(filepath.Join(filepath.Dir(tg.root), "escaped")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the diff wrote outside the root: %v", err)
	}
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// A stored checkpoint whose rootfs diff is kept beside its archive (a
// timeline's, shared) restores with that diff.
func TestRestorePipelineSharedRootfsDiff(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	s := testSubject(t, rt, "a")
	res, err := e.Dump(context.Background(), DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: StoreSink{ShareRootfs: true}})
	if err != nil {
		t.Fatal(err)
	}
	src, err := e.resolve(context.Background(), Ref{Name: res[0].StoreID})
	if err != nil {
		t.Fatal(err)
	}
	if !src.stored || src.rootfsDiff == "" {
		t.Fatalf("resolved %+v, want a stored checkpoint with a shared rootfs diff", src)
	}
	tg := newFakeTarget(t)

	if _, err := e.restore(context.Background(), src, tg, runc.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	tg.assertCalls(t, "prepare", "configure", "start", "close")
	if got := readString(t, filepath.Join(tg.root, "etc", "changed")); got != "changed by a\n" {
		t.Errorf("/etc/changed holds %q", got)
	}
	// The shared diff was linked into the work directory, not moved.
	if _, err := os.Stat(src.rootfsDiff); err != nil {
		t.Errorf("the stored rootfs diff is gone: %v", err)
	}
	assertEmpty(t, filepath.Join(e.root, "work"))
}
