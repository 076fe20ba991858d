package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// Subject is a running container as a dump sees it: the runtime that
// holds it, its spec, its rootfs' layers and what config.dump says of it.
// The engine makes one for each of its own containers; pkg/podcheckpoint
// makes them for a pod's containers, which the CRI runtime's runc holds.
type Subject struct {
	Runtime Runtime
	ID      string
	// Name is how errors name it.
	Name string
	// Marks are its labels (a pod's annotations): the opt-outs.
	Marks  map[string]string
	Spec   *specs.Spec
	Layout rootfs.Layout
	// Config is config.dump but for what the dump fills in (the spec, the
	// runtime's name, the time).
	Config archive.Config

	// own is set for the engine's own containers, whose spec is stasis'
	// and may be restored as recorded (a StoreSink takes only those).
	own bool
	// stopped, when the dump ended the container's processes, records
	// that before anything else can fail: the engine's own containers are
	// then "checkpointed", whatever comes.
	stopped func(context.Context) error
}

// DumpOptions are CRIU's choices for every subject of one dump.
type DumpOptions struct {
	// LeaveRunning freezes the subjects, all of them before the first is
	// dumped, and thaws them once their rootfs diffs are read: files and
	// memory match, and so do the containers of one pod.
	LeaveRunning bool
	// KeepFrozen, with LeaveRunning, leaves the subjects frozen once the
	// dump succeeded (a failed one still thaws them): a migration ends
	// them when their copy runs elsewhere, or resumes them if it fails.
	KeepFrozen     bool
	TCPEstablished bool
	FileLocks      bool
	// IgnoreRootfs leaves the rootfs changes out of the archives (Podman's
	// --ignore-rootfs): a restore then runs on the image as it is.
	IgnoreRootfs bool
}

// DumpJob is one subject of a dump and where its archive goes.
type DumpJob struct {
	Subject *Subject
	To      Sink
}

// dumped is one subject's checkpoint on its way to its sink.
type dumped struct {
	DumpJob
	dir   string // the archive's members
	pages *pageCapture
	res   *CheckpointResult
	// stopping, once CRIU has ended the subject's tasks, delivers what
	// recording it as stopped (Subject.stopped) came to.
	stopping chan stopped
}

// stopped is how recording a subject as stopped went, and how long it took.
type stopped struct {
	err  error
	took time.Duration
}

// Dump is the one checkpoint pipeline: the opt-outs, then (LeaveRunning)
// every subject frozen, each dumped by CRIU, its rootfs diff and metadata
// written, every subject thawed, and each archive handed to its sink. If
// anything fails, the subjects are left running and thawed (or, dumped
// without LeaveRunning, recorded as stopped) and no archive is visible;
// only publishing (signing, pushing), which comes last, keeps the
// archives when it fails, for a repeated request to complete.
func (e *Engine) Dump(ctx context.Context, o DumpOptions, jobs ...DumpJob) (out []*CheckpointResult, err error) {
	start := time.Now()
	version, err := e.criuVersion()
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if err := policy.MayCheckpoint("container "+j.Subject.Name, j.Subject.Marks, j.To.leaves()); err != nil {
			return nil, err
		}
	}
	work, done, err := e.WorkDir("checkpoint-")
	if err != nil {
		return nil, err
	}
	defer done()
	ds := make([]*dumped, len(jobs))
	defer func() {
		for _, d := range ds {
			if d != nil {
				d.pages.abort()
			}
		}
	}()
	for i, j := range jobs {
		ds[i] = &dumped{DumpJob: j, dir: filepath.Join(work, strconv.Itoa(i)),
			res: &CheckpointResult{Container: j.Subject.Name, Phases: Phases{}}}
		if err := os.Mkdir(ds[i].dir, 0o700); err != nil {
			return nil, err
		}
	}
	prepared := time.Since(start)
	thaw := func() error { return nil }
	if o.LeaveRunning {
		t := time.Now()
		if thaw, err = freeze(ctx, jobs); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				err = errors.Join(err, thaw())
			}
		}()
		for _, d := range ds {
			d.res.Phases.Add("freeze", time.Since(t))
		}
	}
	// Whatever happens next, a subject whose tasks are gone is recorded as
	// stopped before Dump returns.
	defer func() {
		if serr := waitStopped(ds); serr != nil {
			out, err = nil, errors.Join(err, serr)
		}
	}()
	for _, d := range ds {
		d.res.Phases.Add("prepare", prepared)
		if err := e.dumpOne(ctx, d, o); err != nil {
			return nil, err
		}
	}
	// Dumped, the checkpoint is finished even if a signal comes now:
	// without LeaveRunning the processes are gone, and their memory is
	// only in work until the archives are written. Publishing may be
	// cancelled: a repeated request completes it.
	publishCtx, ctx := ctx, context.WithoutCancel(ctx)
	for _, d := range ds {
		t := time.Now()
		if err := writeMembers(d.Subject, d.dir, version, !o.IgnoreRootfs); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", d.Subject.Name, err)
		}
		d.res.Phases.Add("rootfs", time.Since(t))
	}
	if !o.KeepFrozen {
		if err := thaw(); err != nil {
			return nil, err
		}
	}
	// Every archive is written before any is published, and a failure
	// takes back those written: no subject of a dump is checkpointed
	// without the others.
	var undos []func() error
	for i, d := range ds {
		undo, err := d.To.write(ctx, e, d, filepath.Join(work, strconv.Itoa(i)+"-"))
		if err != nil {
			for _, u := range undos {
				err = errors.Join(err, u())
			}
			return nil, fmt.Errorf("checkpoint %s: %w", d.Subject.Name, err)
		}
		undos = append(undos, undo)
	}
	// A subject that could not be recorded as stopped has no checkpoint.
	if err := waitStopped(ds); err != nil {
		for _, u := range undos {
			err = errors.Join(err, u())
		}
		return nil, err
	}
	out = make([]*CheckpointResult, len(ds))
	for i, d := range ds {
		if err := d.To.publish(publishCtx, e, d); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", d.Subject.Name, err)
		}
		d.res.Phases.Add("total", time.Since(start))
		out[i] = d.res
	}
	return out, nil
}

// waitStopped waits until every dumped subject is recorded as stopped and
// returns what failed; a second call returns nothing more.
func waitStopped(ds []*dumped) error {
	var errs []error
	for _, d := range ds {
		if d.stopping == nil {
			continue
		}
		r := <-d.stopping
		errs = append(errs, r.err)
		d.stopping = nil
		d.res.Phases.Add("stop", r.took)
	}
	return errors.Join(errs...)
}

// freeze pauses every subject; thaw resumes those it paused, once.
func freeze(ctx context.Context, jobs []DumpJob) (thaw func() error, err error) {
	var frozen []*Subject
	thaw = func() error {
		var errs []error
		for _, s := range frozen {
			if err := s.Runtime.Resume(context.WithoutCancel(ctx), s.ID); err != nil {
				errs = append(errs, fmt.Errorf("thaw %s: %w", s.Name, err))
			}
		}
		frozen = nil
		return errors.Join(errs...)
	}
	for _, j := range jobs {
		if err := j.Subject.Runtime.Pause(ctx, j.Subject.ID); err != nil {
			return nil, errors.Join(fmt.Errorf("checkpoint %s: freeze: %w", j.Subject.Name, err), thaw())
		}
		frozen = append(frozen, j.Subject)
	}
	return thaw, nil
}

// dumpOne has CRIU dump one subject into d.dir.
func (e *Engine) dumpOne(ctx context.Context, d *dumped, o DumpOptions) error {
	s := d.Subject
	t := time.Now()
	pages, err := capturePages(ctx, d, o)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", s.Name, err)
	}
	d.pages = pages
	err = s.Runtime.Checkpoint(ctx, s.ID, runc.CheckpointOptions{
		ImagePath: filepath.Join(d.dir, archive.CheckpointDir), WorkPath: d.dir,
		LeaveRunning: o.LeaveRunning, TCPEstablished: o.TCPEstablished, FileLocks: o.FileLocks,
	}, filepath.Join(d.dir, "runtime.log"))
	if cerr := pages.close(); err == nil && cerr != nil {
		// The tasks are gone but their pages are not all kept: the
		// checkpoint failed, and the container is stopped.
		err = fmt.Errorf("capture pages: %w", cerr)
	}
	if err != nil {
		if !o.LeaveRunning {
			recoverFromFailedDump(context.WithoutCancel(ctx), s)
		}
		return fmt.Errorf("checkpoint %s: %w%s", s.Name, err, e.criuErrors(filepath.Join(d.dir, archive.DumpLog)))
	}
	d.res.Phases.Add("dump", time.Since(t))
	if !o.LeaveRunning && s.stopped != nil {
		// The tasks are gone, but the kernel takes as long to free their
		// memory as the memory is large, and the monitor, runc delete and
		// the unmount wait for that: the rootfs diff (read from the upper
		// dir) and the archive need not.
		d.stopping = make(chan stopped, 1)
		go func() {
			t := time.Now()
			err := s.stopped(context.WithoutCancel(ctx))
			if err != nil {
				err = fmt.Errorf("checkpoint %s: %w", s.Name, err)
			}
			d.stopping <- stopped{err: err, took: time.Since(t)}
		}()
	}
	if st, err := criu.ReadDumpStats(d.dir); err == nil {
		d.res.CRIU = st
	}
	return nil
}

// recoverFromFailedDump makes sure a failed dump leaves the container as
// it was: CRIU thaws on its own errors, but not when it is killed, and the
// freezer cgroup then stays frozen.
func recoverFromFailedDump(ctx context.Context, s *Subject) {
	for i := 0; i < 50; i++ {
		st, err := s.Runtime.State(ctx, s.ID)
		if err != nil || st.Status != runc.Paused {
			return
		}
		s.Runtime.Resume(ctx, s.ID)
		time.Sleep(20 * time.Millisecond)
	}
}

// criuErrors quotes the last errors of a CRIU log for an error message and
// keeps the whole log under <root>/logs, since the work directory it was
// written in is removed.
func (e *Engine) criuErrors(log string) string {
	// The log lies in a work directory that may hold an archive's files:
	// read through no link.
	b, err := archive.ReadMember(filepath.Dir(log), filepath.Base(log), 64<<20)
	if err != nil {
		return ""
	}
	kept := filepath.Join(e.root, "logs", time.Now().UTC().Format("20060102T150405.000")+"-"+filepath.Base(log))
	if os.MkdirAll(filepath.Dir(kept), 0o700) == nil && os.WriteFile(kept, b, 0o600) == nil {
		log = kept
	}
	msg := "\nCRIU log: " + log
	for _, l := range criu.ErrorLines(b, 3) {
		msg += "\n  " + l
	}
	return msg
}

// pageCapture is a dump's memory compressed on its way out of CRIU.
type pageCapture struct {
	streams *criu.PageStreams
	// begun is the archive itself, begun where it will lie (Sink.stage):
	// pages stream into it as CRIU writes them, and reach the disk once.
	begun *archive.Begun
	// captured are the pages that could not (a second process's while the
	// first one's streamed in), compressed into spool files meanwhile.
	mu       sync.Mutex
	captured []*archive.Captured
}

// streamWait is how long a process's pages wait for another's to finish
// streaming into the archive before they go to a spool file instead. CRIU
// dumps one process after the other, so the wait is the moment between
// two; it is bounded in case CRIU ever held two page images open at once.
const streamWait = 2 * time.Second

// capturePages sets up page streaming when it is safe and useful: the
// archive is zstd (captured members are spliced in as frames) and the tasks
// die with the dump (see criu.PageStreams). Otherwise CRIU writes files.
func capturePages(ctx context.Context, d *dumped, o DumpOptions) (_ *pageCapture, err error) {
	pc := &pageCapture{}
	if d.To.compression() != archive.Zstd || o.LeaveRunning {
		return pc, nil
	}
	pids, err := d.Subject.Runtime.Pids(ctx, d.Subject.ID)
	if err != nil || len(pids) == 0 {
		return pc, nil // CRIU writes files; nothing is lost
	}
	images := filepath.Join(d.dir, archive.CheckpointDir)
	if err := os.Mkdir(images, 0o700); err != nil {
		return nil, err
	}
	if dir := d.To.stage(filepath.Dir(d.dir)); dir != "" {
		if pc.begun, err = archive.Begin(dir); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				pc.begun.Abort()
			}
		}()
	}
	pc.streams, err = criu.StreamPages(images, len(pids), func(name string, r io.Reader) error {
		member := path.Join(archive.CheckpointDir, name)
		if pc.begun != nil {
			if ok, err := pc.begun.Stream(member, r, streamWait); ok {
				return err
			}
		}
		m, err := archive.Capture(member, r, filepath.Join(d.dir, name+".zst"))
		if err != nil {
			return err
		}
		pc.mu.Lock()
		pc.captured = append(pc.captured, m)
		pc.mu.Unlock()
		return nil
	})
	return pc, err
}

// close is called once CRIU has exited.
func (pc *pageCapture) close() error {
	if pc.streams == nil {
		return nil
	}
	return pc.streams.Close()
}

// abort gives up the archive begun, unless it was written.
func (pc *pageCapture) abort() {
	if pc != nil && pc.begun != nil {
		pc.begun.Abort()
		pc.begun = nil
	}
}

// writeMembers writes what an archive holds beside the CRIU images:
// rootfs-diff.tar and deleted.files from the rootfs' upper layer, then
// spec.dump and config.dump as CRI-O and Podman name them, so that
// checkpointctl and every engine read the archive. Without withRootfs the
// first two are left out.
func writeMembers(s *Subject, dir, criuVersion string, withRootfs bool) error {
	if withRootfs {
		if err := writeRootfsDiff(s, dir); err != nil {
			return err
		}
	}
	// A copy: the subject's spec stays as the container has it.
	spec := *s.Spec
	if spec.Linux != nil {
		l := *spec.Linux
		l.Namespaces = slices.Clone(l.Namespaces)
		spec.Linux = &l
		// The namespace's path is this host's; whoever restores makes its own.
		for i, ns := range l.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				l.Namespaces[i].Path = ""
			}
		}
	}
	spec.Annotations = maps.Clone(spec.Annotations)
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[metadata.CheckpointAnnotationCriuVersion] = criuVersion
	spec.Annotations[metadata.CheckpointAnnotationRuntimeName] = s.Runtime.Name()
	spec.Annotations[metadata.CheckpointAnnotationEngineVersion] = archive.EngineVersion()
	if err := archive.WriteJSON(dir, archive.SpecDump, &spec); err != nil {
		return err
	}
	cfg := s.Config
	cfg.OCIRuntime, cfg.CheckpointedAt, cfg.Spec = s.Runtime.Name(), time.Now().UTC(), &spec
	if cfg.Command == nil && spec.Process != nil {
		cfg.Command = spec.Process.Args
	}
	return archive.WriteJSON(dir, archive.ConfigDump, &cfg)
}

// writeRootfsDiff writes rootfs-diff.tar and deleted.files from the
// subject's upper layer.
func writeRootfsDiff(s *Subject, dir string) error {
	f, err := os.Create(filepath.Join(dir, archive.RootfsDiff))
	if err != nil {
		return err
	}
	deleted, err := s.Layout.Diff(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("rootfs diff: %w", err)
	}
	if len(deleted) > 0 {
		return archive.WriteJSON(dir, archive.DeletedFiles, deleted)
	}
	return nil
}
