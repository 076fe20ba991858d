package criu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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
}

// LazyPagesServer is a started server, in a helper process that outlives
// the caller: the caller returns once the restore is done, the pages keep
// flowing.
type LazyPagesServer struct {
	cmd *exec.Cmd
}

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
	cmd := exec.Command(self, LazyPagesCommand, string(b))
	cmd.ExtraFiles = append([]*os.File{w}, keep...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = os.Environ() // CRIU is found on our PATH
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start lazy-pages server: %w", err)
	}
	w.Close()
	// CRIU writes one zero byte to its status fd once its socket listens;
	// end of file instead means it died, and the helper wrote why.
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 512)
	n, err := io.ReadAtLeast(r, buf, 1)
	if err == nil && buf[0] == 0 {
		return &LazyPagesServer{cmd: cmd}, nil
	}
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
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	s.cmd.Wait()
}

// Detach leaves the server running after the caller exits.
func (s *LazyPagesServer) Detach() {
	go s.cmd.Wait() // reaps it if we are still around when it ends
}

// Running reports whether the lazy-pages helper with this pid still runs:
// a container must not be dumped while its memory is still coming in.
func Running(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && strings.Contains(string(b), LazyPagesCommand)
}

// LazyPagesMain is the helper process: it runs CRIU's server with the
// status fd inherited from StartLazyPages, waits for it to finish, keeps
// its log when it failed, and removes the work directory.
func LazyPagesMain(arg string) int {
	status := os.NewFile(3, "status")
	var l LazyPages
	if err := json.Unmarshal([]byte(arg), &l); err != nil {
		fmt.Fprintln(status, err)
		return 2
	}
	defer os.RemoveAll(l.Work)
	cmd := exec.Command("criu", "lazy-pages", "--images-dir", l.Images, "--work-dir", l.Work,
		"-o", "lazy-pages.log", "--status-fd", "3")
	cmd.ExtraFiles = []*os.File{status}
	err := cmd.Run()
	if err != nil {
		log := filepath.Join(l.Work, "lazy-pages.log")
		kept := keepLog(log, l.LogDir)
		fmt.Fprintf(status, "criu lazy-pages: %v (log: %s)\n", err, kept)
		return 1
	}
	return 0
}

func keepLog(log, dir string) string {
	b, err := os.ReadFile(log)
	if err != nil || dir == "" {
		return log
	}
	kept := filepath.Join(dir, time.Now().UTC().Format("20060102T150405.000")+"-lazy-pages.log")
	if errors.Join(os.MkdirAll(dir, 0o700), os.WriteFile(kept, b, 0o600)) != nil {
		return log
	}
	return kept
}
