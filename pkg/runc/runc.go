// Package runc drives an OCI runtime (runc, or crun where chosen) through
// its command line, as Podman and containerd's shims do: create, start, kill,
// delete, exec, and checkpoint/restore, which the runtime hands to CRIU.
package runc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ErrNotExist is returned when the runtime does not know the container.
var ErrNotExist = errors.New("container does not exist in the runtime")

// Runtime is one OCI runtime binary with its state directory.
type Runtime struct {
	Binary string // "runc", "crun" or a path
	// Root is the runtime's --root. Without one, Globals are the global
	// flags instead of --root and --log: those a CRI shim or conmon gave
	// stasis-runc, passed on as they came.
	Root    string
	Globals []string
}

// State is what `runc state` reports.
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status Status `json:"status"`
	Bundle string `json:"bundle"`
}

// Status is a container's state as the OCI runtime reports it.
type Status string

// The states of the OCI runtime spec.
const (
	Created Status = "created"
	Running Status = "running"
	Paused  Status = "paused"
	Stopped Status = "stopped"
)

func (r *Runtime) base(logFile string) []string {
	if r.Root == "" {
		return append([]string{r.Binary}, r.Globals...)
	}
	args := []string{r.Binary, "--root", r.Root}
	if logFile != "" {
		args = append(args, "--log", logFile, "--log-format", "json")
	}
	return args
}

// Name is the runtime's short name, as recorded in config.dump.
func (r *Runtime) Name() string {
	b := r.Binary
	return b[strings.LastIndex(b, "/")+1:]
}

// Version returns the first line of `runtime --version`.
func (r *Runtime) Version() string {
	out, err := exec.Command(r.Binary, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}

func (r *Runtime) run(ctx context.Context, args ...string) ([]byte, error) {
	argv := append(r.base(""), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "does not exist") || strings.Contains(msg, "not found") {
			return out, fmt.Errorf("%s %s: %w", r.Name(), args[0], ErrNotExist)
		}
		return out, fmt.Errorf("%s %s: %w: %s", r.Name(), args[0], err, msg)
	}
	return out, nil
}

// State queries the runtime about a container.
func (r *Runtime) State(ctx context.Context, id string) (*State, error) {
	out, err := r.run(ctx, "state", id)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("parse runtime state: %w", err)
	}
	return &s, nil
}

// Pids lists the processes of a container (`runc ps --format json`).
func (r *Runtime) Pids(ctx context.Context, id string) ([]int, error) {
	out, err := r.run(ctx, "ps", "--format", "json", id)
	if err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out, &pids); err != nil {
		return nil, fmt.Errorf("parse runtime ps: %w", err)
	}
	return pids, nil
}

// Kill sends a signal to the container's init ("TERM", "KILL", ...).
func (r *Runtime) Kill(ctx context.Context, id, signal string) error {
	_, err := r.run(ctx, "kill", id, signal)
	return err
}

// Delete removes the runtime's record of the container.
func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := r.run(ctx, append(args, id)...)
	return err
}

// Pause freezes the container's processes.
func (r *Runtime) Pause(ctx context.Context, id string) error {
	_, err := r.run(ctx, "pause", id)
	return err
}

// Resume thaws them.
func (r *Runtime) Resume(ctx context.Context, id string) error {
	_, err := r.run(ctx, "resume", id)
	return err
}

// Exec runs a process in the container with the given stdio and returns its
// exit code.
func (r *Runtime) Exec(ctx context.Context, id string, args []string, env []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	argv := append(r.base(""), "exec")
	for _, e := range env {
		argv = append(argv, "--env", e)
	}
	argv = append(argv, id)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

// RunArgs is the argv that creates and starts a container detached; the
// monitor runs it so that the container's stdio are its pipes.
func (r *Runtime) RunArgs(id, bundle, pidFile, logFile string) []string {
	return append(r.base(logFile), "run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id)
}

// CheckpointOptions are the CRIU choices a user can make.
type CheckpointOptions struct {
	ImagePath      string
	WorkPath       string
	LeaveRunning   bool
	TCPEstablished bool
	FileLocks      bool
}

func criuFlags(imagePath, workPath string, tcp, locks bool) []string {
	f := []string{"--image-path", imagePath, "--work-path", workPath}
	if tcp {
		f = append(f, "--tcp-established")
	}
	if locks {
		f = append(f, "--file-locks")
	}
	return f
}

// Checkpoint dumps the container with CRIU into opts.ImagePath.
func (r *Runtime) Checkpoint(ctx context.Context, id string, opts CheckpointOptions, logFile string) error {
	args := append(r.base(logFile), "checkpoint")
	args = append(args, criuFlags(opts.ImagePath, opts.WorkPath, opts.TCPEstablished, opts.FileLocks)...)
	if opts.LeaveRunning {
		args = append(args, "--leave-running")
	}
	args = append(args, id)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	// If stasis dies, the dump dies with it rather than finish and kill a
	// container whose archive nobody will write; the freeze it leaves is
	// thawed by engine.Recover.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	// Cancelled (a signal, a timeout), CRIU must go with runc, and be gone
	// before Checkpoint returns: a CRIU still dumping would freeze the
	// container again after the caller thawed it, or finish and kill it.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil && cmd.Process != nil {
		waitGroupGone(cmd.Process.Pid, 10*time.Second)
	}
	if err != nil {
		return fmt.Errorf("%s checkpoint: %w: %s", r.Name(), err, LastError(logFile, out.String()))
	}
	return nil
}

// waitGroupGone waits until no process of the process group pgid is left.
func waitGroupGone(pgid int, max time.Duration) {
	for deadline := time.Now().Add(max); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(-pgid, 0) == syscall.ESRCH {
			return
		}
	}
}

// RestoreOptions are a restore's: the bundle prepared for it, the CRIU
// images and CRIU's choices, and what the caller of `runc create` asked.
type RestoreOptions struct {
	Bundle, PidFile, LogFile string
	ImagePath, WorkPath      string
	TCPEstablished           bool
	FileLocks                bool
	// LazyPages leaves lazy memory to a CRIU lazy-pages server listening
	// in WorkPath.
	LazyPages     bool
	ConsoleSocket string
	NoPivot       bool
}

// RestoreArgs is the argv that restores a container detached from CRIU
// images into a prepared bundle; like RunArgs, the monitor (or the CRI
// runtime's shim, through stasis-runc) runs it.
func (r *Runtime) RestoreArgs(id string, o RestoreOptions) []string {
	args := append(r.base(o.LogFile), "restore", "--detach", "--bundle", o.Bundle)
	args = append(args, criuFlags(o.ImagePath, o.WorkPath, o.TCPEstablished, o.FileLocks)...)
	if o.LazyPages {
		args = append(args, "--lazy-pages")
	}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	if o.NoPivot {
		args = append(args, "--no-pivot")
	}
	return append(args, id)
}

// LastError digs the most telling message out of a runtime's JSON log,
// falling back to its captured output.
func LastError(logFile, output string) string {
	msg := ""
	if f, err := os.Open(logFile); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e struct {
				Level string `json:"level"`
				Msg   string `json:"msg"`
			}
			if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
				msg = e.Msg
			}
		}
	}
	if msg == "" {
		msg = strings.TrimSpace(output)
	}
	// runc names CRIU's log in a work directory that stasis removes; the
	// engine says where it kept a copy instead.
	msg, _, _ = strings.Cut(msg, "\nlog file:")
	return msg
}
