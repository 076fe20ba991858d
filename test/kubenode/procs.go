package kubenode

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// proc is a component started by the harness, with its log.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
}

// procs are the components one owner (a control plane, a node's runtime
// and kubelet) started, each logging to logDir/<name>.log; they stop in
// reverse order.
type procs struct {
	logDir string
	list   []*proc
}

// hostCommand is a component run in the host's namespaces.
func hostCommand(name string, args ...string) *exec.Cmd {
	return exec.Command(name, args...)
}

// start starts cmd as component name, with env added to the harness's.
func (ps *procs) start(name string, env []string, cmd *exec.Cmd) error {
	if err := os.MkdirAll(ps.logDir, 0o700); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(ps.logDir, name+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: a test's Ctrl-C reaches the test, which then
	// stops the components in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	ps.list = append(ps.list, &proc{name: name, cmd: cmd, log: logf})
	return nil
}

// pid is the process of component name, 0 if it was not started.
func (ps *procs) pid(name string) int {
	for _, p := range ps.list {
		if p.name == name {
			return p.cmd.Process.Pid
		}
	}
	return 0
}

// stop terminates the components, last started first, calling after (if
// not nil) once each has exited.
func (ps *procs) stop(after func(name string)) {
	for i := len(ps.list) - 1; i >= 0; i-- {
		p := ps.list[i]
		terminate(p.cmd)
		p.log.Close()
		if after != nil {
			after(p.name)
		}
	}
	ps.list = nil
}

// logTail is the end of a component's log, for a failure message.
func (ps *procs) logTail(name string, lines int) string {
	b, _ := os.ReadFile(filepath.Join(ps.logDir, name+".log"))
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
