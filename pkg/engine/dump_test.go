package engine

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// fakeRuntime stands in for runc so that the dump pipeline runs without
// root, runc or CRIU. It records what is asked of it, in order, in calls
// ("pause a", "checkpoint a", ...), and its Checkpoint writes what CRIU
// would: a few image files into ImagePath and dump.log into WorkPath.
type fakeRuntime struct {
	// mu guards calls: a subject is recorded as stopped while the next
	// one dumps.
	mu     sync.Mutex
	calls  []string
	paused map[string]bool
	// opts is what each container's Checkpoint was given.
	opts map[string]runc.CheckpointOptions
	// fail makes the Checkpoint of these IDs fail.
	fail map[string]bool
	// frozenOnFailure leaves a container whose Checkpoint failed paused, as
	// a CRIU that was killed leaves its freezer cgroup.
	frozenOnFailure bool
	// onResume, when set, runs as a container is resumed.
	onResume func(id string)
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{paused: map[string]bool{}, opts: map[string]runc.CheckpointOptions{}, fail: map[string]bool{}}
}

// fakeImages are the CRIU images the fake's Checkpoint writes.
var fakeImages = map[string]string{"inventory.img": "inventory", "pages-1.img": strings.Repeat("page", 1024)}

const fakeCRIUError = "Error (criu/cr-dump.c:2093): fake dump failure"

func (r *fakeRuntime) record(call string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
}

func (r *fakeRuntime) Name() string { return "fakerunc" }

func (r *fakeRuntime) State(_ context.Context, id string) (*runc.State, error) {
	st := &runc.State{ID: id, Pid: 1234, Status: runc.Running}
	if r.paused[id] {
		st.Status = runc.Paused
	}
	return st, nil
}

// Pids says there is no process: page streaming is skipped and the
// images are plain files.
func (r *fakeRuntime) Pids(_ context.Context, id string) ([]int, error) {
	r.record("pids " + id)
	return nil, nil
}

func (r *fakeRuntime) Pause(_ context.Context, id string) error {
	r.record("pause " + id)
	r.paused[id] = true
	return nil
}

func (r *fakeRuntime) Resume(_ context.Context, id string) error {
	r.record("resume " + id)
	if r.onResume != nil {
		r.onResume(id)
	}
	r.paused[id] = false
	return nil
}

func (r *fakeRuntime) Kill(_ context.Context, id, signal string) error {
	r.record("kill " + id)
	return nil
}

func (r *fakeRuntime) Delete(_ context.Context, id string, _ bool) error {
	r.record("delete " + id)
	return nil
}

func (r *fakeRuntime) Exec(_ context.Context, id string, _, _ []string, _ io.Reader, _, _ io.Writer) (int, error) {
	r.record("exec " + id)
	return 0, errors.New("fakerunc: no exec")
}

func (r *fakeRuntime) Checkpoint(_ context.Context, id string, o runc.CheckpointOptions, _ string) error {
	r.record("checkpoint " + id)
	r.opts[id] = o
	if err := os.MkdirAll(o.ImagePath, 0o700); err != nil {
		return err
	}
	for name, data := range fakeImages {
		if err := os.WriteFile(filepath.Join(o.ImagePath, name), []byte(data), 0o600); err != nil {
			return err
		}
	}
	log := "(00.000100) Dumping finished successfully\n"
	if r.fail[id] {
		log = "(00.000100) " + fakeCRIUError + "\n"
	}
	if err := os.WriteFile(filepath.Join(o.WorkPath, archive.DumpLog), []byte(log), 0o600); err != nil {
		return err
	}
	if r.fail[id] {
		if r.frozenOnFailure {
			r.paused[id] = true
		}
		return errors.New("fakerunc checkpoint: exit status 1")
	}
	return nil
}

// The monitor's command lines: no dump runs them.
func (r *fakeRuntime) RunArgs(id, bundle, pidFile, logFile string) []string  { return nil }
func (r *fakeRuntime) RestoreArgs(id string, o runc.RestoreOptions) []string { return nil }

// testEngine is an engine on temporary directories whose CRIU check
// passes without CRIU.
func testEngine(t *testing.T) *Engine {
	t.Helper()
	e, err := New(Options{Root: t.TempDir(), RunRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	e.criuVersion = func() (string, error) { return "4.1.1", nil }
	return e
}

// testSubject is a container held by rt whose rootfs' upper dir holds one
// changed file, /etc/changed.
func testSubject(t *testing.T, rt Runtime, id string) *Subject {
	t.Helper()
	dir := t.TempDir()
	lay := rootfs.NewLayout(filepath.Join(dir, "lower"), filepath.Join(dir, "ctr"))
	if err := os.MkdirAll(filepath.Join(lay.Upper, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(lay.Upper, "etc", "changed"), "changed by "+id+"\n")
	// One of the engine's own, as e.subject makes them, unless a test says.
	return &Subject{
		own:     true,
		Runtime: rt, ID: id, Name: "ctr-" + id, Layout: lay,
		Spec: &specs.Spec{
			Process: &specs.Process{Args: []string{"/app"}},
			Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}}},
		},
		Config: archive.Config{ContainerConfig: metadata.ContainerConfig{ID: id, Name: "ctr-" + id}},
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertEmpty fails unless dir exists and holds nothing.
func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Errorf("%s holds %v, want nothing", dir, names)
	}
}

func assertCalls(t *testing.T, rt *fakeRuntime, want ...string) {
	t.Helper()
	if !reflect.DeepEqual(rt.calls, want) {
		t.Errorf("runtime calls %q, want %q", rt.calls, want)
	}
}

// extracted unpacks an archive file, checking it against the digest
// recorded beside it, which must be there.
func extracted(t *testing.T, path string) archive.Dir {
	t.Helper()
	digests, err := archive.ReadDigestFile(path)
	if err != nil || digests.Archive == "" {
		t.Fatalf("digest file of %s: %q, %v", path, digests, err)
	}
	dir, err := archive.Extract(context.Background(), path, t.TempDir(), archive.ReadOptions{Digest: digests.Archive})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarFiles reads the regular files of a tar: name to content.
func tarFiles(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string]string{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[hdr.Name] = string(b)
		}
	}
}

// With LeaveRunning every subject is frozen before the first is dumped and
// thawed only once all are dumped and their rootfs diffs read; each
// archive holds what another engine needs to restore it.
func TestDumpFreezesAllThenThaws(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	a, b := testSubject(t, rt, "a"), testSubject(t, rt, "b")
	out := t.TempDir()
	pathA, pathB := filepath.Join(out, "a.tar.zst"), filepath.Join(out, "b.tar.zst")
	// Thawed once the rootfs diffs are read, before the archives are
	// written: the containers wait for no compression.
	diffRead, archived := map[string]bool{}, map[string]bool{}
	rt.onResume = func(id string) {
		_, err := os.Stat(filepath.Join(rt.opts[id].WorkPath, archive.RootfsDiff))
		diffRead[id] = err == nil
		_, err = os.Stat(filepath.Join(out, id+".tar.zst"))
		archived[id] = err == nil
	}
	// Left running, the containers are not stopped.
	a.stopped = func(context.Context) error { rt.record("stopped a"); return nil }

	res, err := e.Dump(context.Background(), DumpOptions{LeaveRunning: true},
		DumpJob{Subject: a, To: FileSink{Path: pathA}}, DumpJob{Subject: b, To: FileSink{Path: pathB}})
	if err != nil {
		t.Fatal(err)
	}

	assertCalls(t, rt, "pause a", "pause b", "checkpoint a", "checkpoint b", "resume a", "resume b")
	if !diffRead["a"] || !diffRead["b"] {
		t.Errorf("thawed before the rootfs diff was read: %v", diffRead)
	}
	if archived["a"] || archived["b"] {
		t.Errorf("thawed only once an archive was written: %v", archived)
	}
	for _, id := range []string{"a", "b"} {
		if !rt.opts[id].LeaveRunning {
			t.Errorf("checkpoint %s without --leave-running", id)
		}
	}
	if len(res) != 2 || res[0].Container != "ctr-a" || res[1].Container != "ctr-b" || res[0].Archive != pathA || res[1].Archive != pathB {
		t.Fatalf("results %+v", res)
	}
	for _, p := range []string{"dump", "rootfs", "archive", "total"} {
		if _, ok := res[0].Phases[p]; !ok {
			t.Errorf("no phase %q in %v", p, res[0].Phases)
		}
	}
	if d, _ := archive.ReadDigestFile(pathB); d.Archive != res[1].Digest || d.Index == "" {
		t.Errorf("digest file of b says %q, the result %q", d, res[1].Digest)
	}

	dir := extracted(t, pathA)
	cfg, err := dir.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "ctr-a" || cfg.OCIRuntime != "fakerunc" || !reflect.DeepEqual(cfg.Command, []string{"/app"}) || cfg.CheckpointedAt.IsZero() {
		t.Errorf("config.dump: name %q, runtime %q, command %q, checkpointed at %v", cfg.Name, cfg.OCIRuntime, cfg.Command, cfg.CheckpointedAt)
	}
	if cfg.Spec == nil || cfg.Spec.Linux == nil || len(cfg.Spec.Linux.Namespaces) != 1 || cfg.Spec.Linux.Namespaces[0].Path != "" {
		t.Errorf("config.dump's spec keeps this host's network namespace: %+v", cfg.Spec)
	}
	var spec specs.Spec
	b1, err := dir.ReadMember(archive.SpecDump, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b1, &spec); err != nil {
		t.Fatal(err)
	}
	if v := spec.Annotations[metadata.CheckpointAnnotationCriuVersion]; v != "4.1.1" {
		t.Errorf("CRIU version annotation %q", v)
	}
	if v := spec.Annotations[metadata.CheckpointAnnotationRuntimeName]; v != "fakerunc" {
		t.Errorf("runtime name annotation %q", v)
	}
	if spec.Linux.Namespaces[0].Path != "" {
		t.Errorf("spec.dump keeps the network namespace path %q", spec.Linux.Namespaces[0].Path)
	}
	if diff := tarFiles(t, dir.RootfsDiff()); diff["etc/changed"] != "changed by a\n" || len(diff) != 1 {
		t.Errorf("rootfs diff holds %q", diff)
	}
	for name, data := range fakeImages {
		b, err := os.ReadFile(filepath.Join(dir.Images(), name))
		if err != nil || string(b) != data {
			t.Errorf("checkpoint/%s: %d bytes, %v", name, len(b), err)
		}
	}
	if _, err := os.Stat(filepath.Join(string(dir), archive.DumpLog)); err != nil {
		t.Errorf("no dump.log in the archive: %v", err)
	}
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// A subject whose dump fails thaws every subject and leaves no archive,
// no temporary file and no work directory; the error quotes CRIU's log,
// which is kept.
func TestDumpFailureThawsAndLeavesNothing(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	rt.fail["b"] = true
	a, b := testSubject(t, rt, "a"), testSubject(t, rt, "b")
	out := t.TempDir()

	_, err := e.Dump(context.Background(), DumpOptions{LeaveRunning: true},
		DumpJob{Subject: a, To: FileSink{Path: filepath.Join(out, "a.tar.zst")}},
		DumpJob{Subject: b, To: FileSink{Path: filepath.Join(out, "b.tar.zst")}})
	if err == nil || !strings.Contains(err.Error(), "checkpoint ctr-b") {
		t.Fatalf("error %v, want one naming ctr-b", err)
	}
	if !strings.Contains(err.Error(), fakeCRIUError) {
		t.Errorf("the error does not quote CRIU's log: %v", err)
	}
	assertCalls(t, rt, "pause a", "pause b", "checkpoint a", "checkpoint b", "resume a", "resume b")
	if rt.paused["a"] || rt.paused["b"] {
		t.Errorf("left paused: %v", rt.paused)
	}
	assertEmpty(t, out)
	assertEmpty(t, filepath.Join(e.root, "work"))
	logs, _ := filepath.Glob(filepath.Join(e.root, "logs", "*-"+archive.DumpLog))
	if len(logs) != 1 {
		t.Fatalf("kept CRIU logs %v, want one", logs)
	}
	if b, _ := os.ReadFile(logs[0]); !strings.Contains(string(b), fakeCRIUError) {
		t.Errorf("kept log holds %q", b)
	}
}

// The opt-out marks are obeyed before anything touches the container:
// checkpoint=never refuses every sink, migrate=never those that leave
// the node.
func TestDumpRefusesOptedOut(t *testing.T) {
	ctx := context.Background()
	t.Run("checkpoint never", func(t *testing.T) {
		e, rt := testEngine(t), newFakeRuntime()
		s := testSubject(t, rt, "a")
		s.Marks = map[string]string{policy.Checkpoint: policy.Never}
		for _, to := range []Sink{StoreSink{}, FileSink{Path: filepath.Join(t.TempDir(), "a.tar")}} {
			if _, err := e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: to}); !errors.Is(err, policy.ErrOptedOut) {
				t.Errorf("to %T: error %v, want ErrOptedOut", to, err)
			}
		}
		assertCalls(t, rt)
		if all, _ := e.Checkpoints.List(); len(all) != 0 {
			t.Errorf("stored %d checkpoints", len(all))
		}
	})
	t.Run("migrate never", func(t *testing.T) {
		e, rt := testEngine(t), newFakeRuntime()
		s := testSubject(t, rt, "a")
		s.Marks = map[string]string{policy.Migrate: policy.Never}
		out := t.TempDir()
		_, err := e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: FileSink{Path: filepath.Join(out, "a.tar")}})
		if !errors.Is(err, policy.ErrOptedOut) {
			t.Fatalf("to a file: error %v, want ErrOptedOut", err)
		}
		assertCalls(t, rt)
		assertEmpty(t, out)

		res, err := e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: StoreSink{}})
		if err != nil {
			t.Fatalf("to the node's store: %v", err)
		}
		all, err := e.Checkpoints.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 1 || all[0].ContainerID != "a" || all[0].ID != res[0].StoreID || all[0].Archive != res[0].Archive {
			t.Fatalf("stored %+v, result %+v", all, res[0])
		}
	})
}

// Without LeaveRunning nothing is frozen (CRIU stops the tasks), and the
// subject is recorded as stopped by the time Dump returns (while the
// archive is written: the kernel frees a large memory slowly).
func TestDumpWithoutLeaveRunningRecordsStopped(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	s := testSubject(t, rt, "a")
	path := filepath.Join(t.TempDir(), "a.tar.zst")
	s.stopped = func(context.Context) error {
		time.Sleep(50 * time.Millisecond)
		rt.record("stopped a")
		return nil
	}

	res, err := e.Dump(context.Background(), DumpOptions{}, DumpJob{Subject: s, To: FileSink{Path: path}})
	if err != nil {
		t.Fatal(err)
	}
	// pids: a zstd archive of a dump that stops the tasks streams their
	// pages, had they any.
	assertCalls(t, rt, "pids a", "checkpoint a", "stopped a")
	if rt.opts["a"].LeaveRunning {
		t.Error("checkpoint with --leave-running")
	}
	if d := res[0].Phases["stop"]; d < 50000 {
		t.Errorf("stop phase %d µs in %v", d, res[0].Phases)
	}
	if _, err := os.Stat(path); err != nil {
		t.Error(err)
	}
}

// A subject that cannot be recorded as stopped has no checkpoint: the
// archive written meanwhile is taken back.
func TestDumpStopFailureTakesBackTheArchive(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	s := testSubject(t, rt, "a")
	path := filepath.Join(t.TempDir(), "a.tar.zst")
	s.stopped = func(context.Context) error { return errors.New("disk full") }
	if _, err := e.Dump(context.Background(), DumpOptions{}, DumpJob{Subject: s, To: FileSink{Path: path}}); err == nil ||
		!strings.Contains(err.Error(), "disk full") {
		t.Fatalf("dump whose subject was not recorded as stopped: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Dir(path)); len(left) != 0 {
		t.Fatalf("left %v beside the archive", left)
	}
}

// A dump that fails without LeaveRunning thaws a container CRIU left
// frozen and does not record it as stopped.
func TestDumpFailureWithoutLeaveRunningThaws(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	rt.fail["a"], rt.frozenOnFailure = true, true
	s := testSubject(t, rt, "a")
	s.stopped = func(context.Context) error { rt.record("stopped a"); return nil }
	out := t.TempDir()

	_, err := e.Dump(context.Background(), DumpOptions{}, DumpJob{Subject: s, To: FileSink{Path: filepath.Join(out, "a.tar.zst")}})
	if err == nil || !strings.Contains(err.Error(), "checkpoint ctr-a") {
		t.Fatalf("error %v, want one naming ctr-a", err)
	}
	assertCalls(t, rt, "pids a", "checkpoint a", "resume a")
	assertEmpty(t, out)
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// A stored timeline shares a rootfs diff that has not changed, even when a
// directory's time moved, and stores a changed one anew.
func TestDumpSharesUnchangedRootfs(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	s := testSubject(t, rt, "a")
	dump := func() string {
		t.Helper()
		res, err := e.Dump(context.Background(), DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: StoreSink{ShareRootfs: true}})
		if err != nil {
			t.Fatal(err)
		}
		ent, err := e.Checkpoints.Get(res[0].StoreID)
		if err != nil {
			t.Fatal(err)
		}
		if ent.RootfsDiff == "" {
			t.Fatalf("entry %s has no rootfs diff beside its archive", ent.ID)
		}
		dir, err := archive.Extract(context.Background(), ent.Archive, t.TempDir(), archive.ReadOptions{Digest: ent.Digest})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir.RootfsDiff()); err == nil {
			t.Errorf("entry %s has its rootfs diff in its archive too", ent.ID)
		}
		return ent.RootfsDiff
	}
	same := func(a, b string) bool {
		t.Helper()
		fa, errA := os.Stat(a)
		fb, errB := os.Stat(b)
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		return os.SameFile(fa, fb)
	}

	first := dump()
	// Another time of /etc makes other bytes but the same change.
	when := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(s.Layout.Upper, "etc"), when, when); err != nil {
		t.Fatal(err)
	}
	second := dump()
	writeFile(t, filepath.Join(s.Layout.Upper, "etc", "changed"), "changed again\n")
	third := dump()

	if first == second || !same(first, second) {
		t.Errorf("an unchanged rootfs diff is not shared: %s, %s", first, second)
	}
	if same(second, third) {
		t.Errorf("a changed rootfs diff is shared with the previous one")
	}
	if diff := tarFiles(t, third); diff["etc/changed"] != "changed again\n" {
		t.Errorf("the third diff holds %q", diff)
	}
}

// One subject's archive failing takes back the others' of the same dump:
// a pod is checkpointed whole or not at all.
func TestDumpFailedSinkTakesBackTheOthers(t *testing.T) {
	e, rt := testEngine(t), newFakeRuntime()
	out := t.TempDir()
	_, err := e.Dump(context.Background(), DumpOptions{LeaveRunning: true},
		DumpJob{Subject: testSubject(t, rt, "a"), To: StoreSink{}},
		DumpJob{Subject: testSubject(t, rt, "b"), To: FileSink{Path: filepath.Join(out, "b.tar.zst")}},
		DumpJob{Subject: testSubject(t, rt, "d"), To: ImageSink{Name: "localhost/ckpt/d:1", Local: true}},
		DumpJob{Subject: testSubject(t, rt, "c"), To: FileSink{Path: filepath.Join(out, "missing", "c.tar.zst")}})
	if err == nil || !strings.Contains(err.Error(), "c.tar.zst") {
		t.Fatalf("error %v, want the failed write of c", err)
	}
	if all, _ := e.Checkpoints.List(); len(all) != 0 {
		t.Errorf("a's store entry stayed: %+v", all[0])
	}
	if all, err := e.Images.List(); err != nil || len(all) != 0 {
		t.Errorf("d's checkpoint image stayed: %v, %v", all, err)
	}
	assertEmpty(t, out)
	assertEmpty(t, filepath.Join(e.root, "work"))
}

// A pod's containers (not the engine's) stay off the checkpoint store,
// whose entries are restored with their spec as recorded; migrate=never
// keeps a pod's local checkpoint image, not one made to travel.
func TestDumpSinksForeignSubjects(t *testing.T) {
	ctx := context.Background()
	e, rt := testEngine(t), newFakeRuntime()
	s := testSubject(t, rt, "a")
	s.own = false
	if _, err := e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: StoreSink{}}); err == nil || !strings.Contains(err.Error(), "own containers") {
		t.Fatalf("a foreign subject into the store: %v", err)
	}
	if all, _ := e.Checkpoints.List(); len(all) != 0 {
		t.Fatalf("stored %+v", all[0])
	}
	s.Marks = map[string]string{policy.Migrate: policy.Never}
	if _, err := e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: ImageSink{Name: "localhost/ckpt/a:1"}}); !errors.Is(err, policy.ErrOptedOut) {
		t.Fatalf("migrate=never into an image made to travel: %v", err)
	}
	res, err := e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: ImageSink{Name: "localhost/ckpt/a:1", Local: true}})
	if err != nil {
		t.Fatalf("migrate=never into the node's own image: %v", err)
	}
	if _, err := e.Images.Get(res[0].Image); err != nil {
		t.Fatal(err)
	}
	_, err = e.Dump(ctx, DumpOptions{LeaveRunning: true}, DumpJob{Subject: s, To: ImageSink{Name: "localhost/ckpt/a:2", Local: true, Push: true}})
	if !errors.Is(err, policy.ErrOptedOut) {
		t.Fatalf("migrate=never pushed: %v", err)
	}
}
