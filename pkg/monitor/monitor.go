// Package monitor is the small process that stays with each container, as
// conmon does for Podman: it owns the pipes that are the container's stdout
// and stderr (CRIU can re-attach pipes on restore, but not a terminal or a
// file that lives outside the container), copies them into the log, reaps
// the container and records how it exited.
//
// The monitor is the stasis binary itself, re-executed with a hidden
// subcommand, so there is nothing extra to install.
package monitor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/runc"
)

// Command is the hidden subcommand that runs the monitor.
const Command = "__monitor"

// Config tells a monitor what to start and where to record things.
type Config struct {
	Argv     []string // the runtime's run or restore command
	PidFile  string   // written by the runtime
	LogFile  string   // container output, appended
	ExitFile string   // written when the container exits
	ErrFile  string   // the runtime's JSON log, for error messages
}

// Exit is the content of ExitFile.
type Exit struct {
	Code     int       `json:"code"`
	Signal   string    `json:"signal,omitempty"`
	ExitedAt time.Time `json:"exitedAt"`
}

type started struct {
	Pid   int    `json:"pid"`
	Error string `json:"error,omitempty"`
}

// Start launches a monitor for cfg and waits until the container runs (or
// failed to start). It returns the container's init pid.
func Start(cfg Config) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return 0, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	cmd := exec.Command(self, Command, string(b))
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Keep PATH: the runtime must find CRIU where we found it.
	cmd.Env = os.Environ()
	if err := cmd.Start(); err != nil {
		w.Close()
		return 0, fmt.Errorf("start monitor: %w", err)
	}
	w.Close()
	go cmd.Wait() // the monitor outlives us; reap it if it does not
	var st started
	if err := json.NewDecoder(r).Decode(&st); err != nil {
		return 0, fmt.Errorf("monitor died before the container started: %w", err)
	}
	if st.Error != "" {
		return 0, errors.New(st.Error)
	}
	return st.Pid, nil
}

// Main is the monitor process. It never returns.
func Main(arg string) {
	sync := os.NewFile(3, "sync")
	var cfg Config
	if err := json.Unmarshal([]byte(arg), &cfg); err != nil {
		report(sync, started{Error: "monitor: " + err.Error()})
		os.Exit(1)
	}
	os.Exit(run(cfg, sync))
}

func report(w io.Writer, s started) { json.NewEncoder(w).Encode(s) }

func run(cfg Config, sync *os.File) int {
	fail := func(err error) int {
		report(sync, started{Error: err.Error()})
		sync.Close()
		return 1
	}
	// Orphans of the runtime (the container's init) become our children.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail(fmt.Errorf("monitor: set subreaper: %w", err))
	}
	logf, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(cfg.Argv[0], cfg.Argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, pw, pw
	runErr := cmd.Run()
	pw.Close()
	devnull.Close()
	if runErr != nil {
		return fail(fmt.Errorf("%w: %s", runErr, lastRuntimeError(cfg.ErrFile, pr)))
	}
	pid, err := readPid(cfg.PidFile)
	if err != nil {
		return fail(err)
	}
	report(sync, started{Pid: pid})
	sync.Close()

	copied := make(chan struct{})
	go func() { io.Copy(logf, pr); close(copied) }()
	exit := waitFor(pid)
	// Children of init are killed with it (pid namespace), so the pipe ends
	// soon; do not wait forever for a writer that escaped.
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
	}
	logf.Close()
	b, _ := json.Marshal(exit)
	os.WriteFile(cfg.ExitFile+".tmp", b, 0o600)
	os.Rename(cfg.ExitFile+".tmp", cfg.ExitFile)
	return 0
}

func waitFor(pid int) Exit {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // ECHILD: it is gone without us seeing it
			return Exit{Code: -1, ExitedAt: time.Now().UTC()}
		}
		if got != pid {
			continue
		}
		e := Exit{Code: ws.ExitStatus(), ExitedAt: time.Now().UTC()}
		if ws.Signaled() {
			e.Code = 128 + int(ws.Signal())
			e.Signal = unix.SignalName(ws.Signal())
		}
		return e
	}
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("runtime wrote no pid file: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func lastRuntimeError(errFile string, out io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(out, 64<<10))
	return runc.LastError(errFile, string(b))
}
