package criu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/pages"
)

// LazyPagesCommand is the hidden subcommand of the stasis binary that runs
// LazyPagesMain.
const LazyPagesCommand = "__lazy-pages"

// LazyPages describes a lazy restore's page server. CRIU restores the
// tasks without the memory it marked lazy (private anonymous pages, which
// is nearly all of a heap) and registers it with userfaultfd; CRIU's
// lazy-pages server then fills each page the tasks touch, and copies the
// rest in behind them. The tasks run long before their memory is all in.
type LazyPages struct {
	// Images holds the checkpoint's CRIU images; Work is CRIU's work
	// directory for the restore (the socket to the restore lives there).
	// Work is removed once the server is done, so Images should be inside.
	Images string `json:"images"`
	Work   string `json:"work"`
	// LogDir keeps the server's log when it fails.
	LogDir string `json:"log_dir"`
	// Archive, when set, holds the pages images, which the unpacking left
	// in it (archive.ExtractExcept): the helper then serves the lazy pages
	// to CRIU itself, read from the archive frame by frame (pkg/pages),
	// and no pages image is ever unpacked.
	Archive *ArchivePages `json:"archive,omitempty"`
}

// ArchivePages says where in an indexed archive the pages images are.
type ArchivePages struct {
	// File is the archive, opened; the helper inherits it.
	File *os.File `json:"-"`
	// IndexDigest is the archive's index as verified when it was opened:
	// the helper reads every frame through it.
	IndexDigest string `json:"index_digest"`
	// Spans are the pages images, by file name in Images.
	Spans map[string]archive.Span `json:"spans"`
	// Fetch, when set, says File is still arriving (a blob fetched from a
	// registry as it is read): what it takes to go on fetching it is for
	// the helper's ArchiveOpener to read, and opaque here.
	Fetch json.RawMessage `json:"fetch,omitempty"`
}

// ArchiveOpener opens, in the helper, what the pages are read from: the
// archive a describes, inherited as f. finish, when not nil, is called
// once CRIU is done, told whether every page was served, and returns once
// whatever the archive does behind the reads (a download) is done.
type ArchiveOpener func(f *os.File, a *ArchivePages) (r io.ReaderAt, size int64, finish func(served bool) error, err error)

// OpenArchiveFile is the ArchiveOpener of an archive file that is all there.
func OpenArchiveFile(f *os.File, _ *ArchivePages) (io.ReaderAt, int64, func(bool) error, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, nil, err
	}
	return f, fi.Size(), nil, nil
}

// helperHeap is the Go heap the helper aims to stay under: two frames kept
// (helperFrames), one being read and decompressed, one prefetched.
const helperHeap = 24 << 20

// helperFrames is how many decompressed frames the helper keeps: CRIU asks
// for pages mostly in order, the faults aside.
const helperFrames = 2

// LazyPagesServer is a started server, in a helper process that outlives
// the caller: the caller returns once the restore is done, the pages keep
// flowing.
type LazyPagesServer struct {
	cmd *exec.Cmd
	// restored is the pipe on which the restore tells the helper the
	// restored init's pid (Restored): if the pages stop coming, the helper
	// kills it rather than leave it running on memory that reads as zeros.
	restored *os.File
	// done is closed once the helper has exited; err is how.
	done chan struct{}
	err  error
}

// The helper's descriptors: CRIU's status, the restored init's pid, its
// configuration (LazyPages, which may hold registry credentials: never on
// the command line), and, serving from an archive, the archive; then what
// the caller keeps.
const (
	statusFd   = 3
	restoredFd = 4
	configFd   = 5
	archiveFd  = 6
)

// StartLazyPages starts the server and returns once it listens. The helper
// inherits keep (a lock on the work directory, say) and holds it until it
// is done.
func StartLazyPages(l LazyPages, keep ...*os.File) (*LazyPagesServer, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		w.Close()
		return nil, err
	}
	defer pr.Close()
	cr, cw, err := os.Pipe()
	if err != nil {
		w.Close()
		pw.Close()
		return nil, err
	}
	defer cr.Close()
	cmd := exec.Command(self, LazyPagesCommand)
	cmd.ExtraFiles = []*os.File{w, pr, cr} // statusFd, restoredFd, configFd
	if l.Archive != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, l.Archive.File) // archiveFd
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, keep...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = os.Environ() // CRIU is found on our PATH
	if err := cmd.Start(); err != nil {
		w.Close()
		pw.Close()
		cw.Close()
		return nil, fmt.Errorf("start lazy-pages server: %w", err)
	}
	w.Close()
	// Ours closed, a helper that died unread fails the write (EPIPE)
	// rather than blocking it.
	cr.Close()
	// The helper reads its configuration to the end before anything else.
	_, err = cw.Write(b)
	cw.Close()
	if err != nil {
		pw.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("start lazy-pages server: %w", err)
	}
	// CRIU writes one zero byte to its status fd once its socket listens;
	// end of file instead means it died, and the helper wrote why.
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 512)
	n, err := io.ReadAtLeast(r, buf, 1)
	if err == nil && buf[0] == 0 {
		s := &LazyPagesServer{cmd: cmd, restored: pw, done: make(chan struct{})}
		go func() { s.err = cmd.Wait(); close(s.done) }()
		return s, nil
	}
	pw.Close()
	cmd.Process.Kill()
	cmd.Wait()
	msg := strings.TrimSpace(string(buf[:n]))
	if msg == "" && err != nil {
		msg = err.Error()
	}
	return nil, fmt.Errorf("lazy-pages server did not start: %s", msg)
}

// Pid is the helper's pid; it exits when every page is in.
func (s *LazyPagesServer) Pid() int { return s.cmd.Process.Pid }

// Stop ends the server of a restore that failed. The work directory is
// then the caller's to remove.
func (s *LazyPagesServer) Stop() {
	s.restored.Close()
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// Restored tells the helper the restored init's pid, for it to kill should
// the pages stop coming. The helper reads it only when it fails, so a
// write that finds it gone means it has exited: successfully (every page
// in, which a small memory can be before the restore returns), or not,
// and then Restored returns why, and the pid is the caller's to kill.
func (s *LazyPagesServer) Restored(pid int) error {
	_, err := fmt.Fprintf(s.restored, "%d\n", pid)
	s.restored.Close()
	if err == nil {
		return nil
	}
	<-s.done
	return s.err
}

// Serving reports whether the lazy-pages helper with this pid still
// serves pages: whether its `criu lazy-pages` runs. A container must not be
// dumped while its memory is still coming in; once CRIU is done, the helper
// may go on (storing a checkpoint image it fetched) without holding that up.
func Serving(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !strings.Contains(string(b), LazyPagesCommand) {
		return false
	}
	// CRIU is forked by whichever of the helper's threads ran exec: its
	// children are listed per thread.
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "children"))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, child := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile(filepath.Join("/proc", child, "comm"))
			if strings.TrimSpace(string(comm)) == "criu" {
				return true
			}
		}
	}
	return false
}

// LazyPagesMain is the helper process: it runs CRIU's server with the
// status fd inherited from StartLazyPages (and, serving from an archive
// opened with open, a socket to its own page server), waits for it to
// finish, keeps its log when it failed, and removes the work directory.
func LazyPagesMain(open ArchiveOpener) int {
	status := os.NewFile(statusFd, "status")
	// The helper lives as long as the pages flow: its heap is a few frames
	// and one answer, and the collector should keep it near that rather
	// than let it double (a node runs one helper per lazy restore).
	debug.SetMemoryLimit(helperHeap)
	var l LazyPages
	if err := json.NewDecoder(os.NewFile(configFd, "config")).Decode(&l); err != nil {
		fmt.Fprintf(status, "lazy-pages configuration: %v\n", err)
		return 2
	}
	defer os.RemoveAll(l.Work)
	// CRIU's fds 3 and 4 are files[0] and files[1].
	args := []string{"lazy-pages", "--images-dir", l.Images, "--work-dir", l.Work, "-o", "lazy-pages.log", "--status-fd", "3"}
	files := []*os.File{status}
	var served chan error
	var finish func(bool) error
	if l.Archive != nil {
		var src *pages.Source
		var err error
		src, finish, err = archiveSource(open, os.NewFile(archiveFd, "archive"), l)
		if err != nil {
			fmt.Fprintf(status, "lazy pages from the archive: %v\n", err)
			return 1
		}
		ours, theirs, err := socketPair()
		if err != nil {
			fmt.Fprintln(status, err)
			return 1
		}
		// CRIU's page-server client on a socket stasis made (--ps-socket,
		// CRIU's fd 4 below): no port to open, nothing another process
		// could connect to.
		args = append(args, "--page-server", "--ps-socket", "4")
		files = append(files, theirs)
		served = make(chan error, 1)
		go func() {
			err := pages.Serve(ours, src)
			ours.Close() // a server that gave up must not leave CRIU waiting
			served <- err
		}()
	}
	cmd := exec.Command("criu", args...)
	cmd.ExtraFiles = files
	err := cmd.Start()
	if len(files) > 1 {
		files[1].Close() // CRIU's now: its exit ends the server's reads
	}
	if err == nil {
		err = cmd.Wait()
	}
	if served != nil {
		// CRIU is gone, so the server's reads end too. Its error, first,
		// is why CRIU failed (a frame not as recorded, say).
		if serr := <-served; serr != nil {
			err = errors.Join(serr, err)
		}
	}
	if err != nil {
		// Memory left unfilled reads as zeros: the process goes first,
		// before anything else is waited for.
		killRestored(os.NewFile(restoredFd, "restored"))
		if finish != nil {
			finish(false)
		}
		log := filepath.Join(l.Work, "lazy-pages.log")
		// After the restore nobody reads the status fd: the kept log is
		// where the reason is found.
		if f, ferr := os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); ferr == nil {
			fmt.Fprintf(f, "stasis: lazy pages failed, the restored process was killed: %v\n", err)
			f.Close()
		}
		kept := keepLog(log, l.LogDir)
		fmt.Fprintf(status, "criu lazy-pages: %v (log: %s)\n", err, kept)
		return 1
	}
	// The process has its memory (Serving says so from here on): what goes
	// wrong now (a download behind the pages) loses a copy, not the process.
	if finish != nil {
		if ferr := finish(true); ferr != nil {
			keepMessage(l.LogDir, fmt.Sprintf("stasis: every page was served; then: %v\n", ferr))
		}
	}
	return 0
}

// archiveSource reads the pagemaps unpacked into l.Images and pairs them
// with the pages images where they lie in the archive, opened with open.
func archiveSource(open ArchiveOpener, f *os.File, l LazyPages) (*pages.Source, func(bool) error, error) {
	r, size, finish, err := open(f, l.Archive)
	if err != nil {
		return nil, nil, err
	}
	src, err := func() (*pages.Source, error) {
		s, err := archive.OpenSeekable(r, size, l.Archive.IndexDigest)
		if err != nil {
			return nil, err
		}
		s.KeepFrames(helperFrames)
		images := map[string]pages.Image{}
		for name, sp := range l.Archive.Spans {
			images[name] = s.Member(sp)
		}
		return pages.OpenSource(l.Images, images)
	}()
	if err != nil {
		if finish != nil {
			finish(false)
		}
		return nil, nil, err
	}
	return src, finish, nil
}

func socketPair() (ours, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("page server socket: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "page-server"), os.NewFile(uintptr(fds[1]), "page-client"), nil
}

// killRestored kills the restored init, when the restore got that far:
// once the lazy-pages server is gone, the memory it had yet to fill reads
// as zeros, and a process must not run on that. The restore writes the pid
// once runc restore returns, or closes the pipe (failed, or gone): either
// ends the read.
func killRestored(restored *os.File) {
	b, _ := io.ReadAll(io.LimitReader(restored, 32))
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// keepMessage keeps msg in dir as a log of its own.
func keepMessage(dir, msg string) {
	keep(dir, []byte(msg))
}

// keepLog copies log into dir and returns where it is kept (log itself
// when it cannot be copied).
func keepLog(log, dir string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return log
	}
	if kept := keep(dir, b); kept != "" {
		return kept
	}
	return log
}

// keep writes b into dir under a name of its own, and returns that name
// ("" when it cannot).
func keep(dir string, b []byte) string {
	if dir == "" {
		return ""
	}
	kept := filepath.Join(dir, time.Now().UTC().Format("20060102T150405.000")+"-lazy-pages.log")
	if errors.Join(os.MkdirAll(dir, 0o700), os.WriteFile(kept, b, 0o600)) != nil {
		return ""
	}
	return kept
}
