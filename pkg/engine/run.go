package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/monitor"
	"github.com/stasis-dev/stasis/pkg/netns"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// RunOptions describe a new container.
type RunOptions struct {
	Name    string
	Image   string
	Args    []string // replaces the image's command when set
	Env     []string
	Workdir string
	User    string
	Network string
	Volumes []runc.Mount
	Labels  map[string]string
}

// Run creates and starts a container in the background.
func (e *Engine) Run(ctx context.Context, o RunOptions) (c *Container, err error) {
	img, err := e.Images.Get(o.Image)
	if err != nil {
		return nil, err
	}
	if info, ok := checkpointimage.Read(img.Annotations); ok {
		return nil, fmt.Errorf("image %s is a checkpoint of container %s: restore it with 'stasis restore %s'", img.Name, info.Container, img.Name)
	}
	for _, v := range o.Volumes {
		if _, err := os.Stat(v.Source); err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Source, err)
		}
	}
	unlock, err := e.lock("")
	if err != nil {
		return nil, err
	}
	defer unlock()
	id := newID()
	if o.Name == "" {
		o.Name = "stasis-" + id[:8]
	}
	if err := e.nameFree(ctx, o.Name); err != nil {
		return nil, err
	}
	args := o.Args
	if len(args) == 0 {
		args = append(append([]string{}, img.Config.Entrypoint...), img.Config.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("image %s has no command: give one after the image name", img.Name)
	}
	if o.Network == "" {
		o.Network = runc.NetworkNone
	}
	workdir := o.Workdir
	if workdir == "" {
		workdir = img.Config.WorkingDir
	}
	user := o.User
	if user == "" {
		user = img.Config.User
	}
	c = &Container{ID: id, Name: o.Name, Image: img.Name, ImageID: img.ID, Args: args, Network: o.Network,
		Labels: o.Labels, Created: time.Now().UTC()}
	p := e.paths(id)
	lower, err := e.Images.Rootfs(img)
	if err != nil {
		return nil, err
	}
	lay := p.layout(lower)
	defer func() {
		if err != nil {
			e.discard(context.WithoutCancel(ctx), c)
		}
	}()
	for _, d := range []string{p.bundle(), p.run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return c, err
		}
	}
	if err := lay.Mount(); err != nil {
		return c, err
	}
	etc, err := writeEtc(p.etc(), o.Name, o.Network)
	if err != nil {
		return c, err
	}
	ns := ""
	if o.Network == runc.NetworkNone {
		ns = p.netns()
		if err := netns.New(ns); err != nil {
			return c, err
		}
	}
	spec, err := runc.Spec(runc.SpecOptions{
		ID: id, Hostname: o.Name, Rootfs: lay.Merged, Args: args,
		Env: append(append([]string{}, img.Config.Env...), o.Env...), Cwd: workdir, User: user,
		Network: o.Network, NetNSPath: ns, Mounts: o.Volumes, EtcFiles: etc, Annotations: e.annotations(c),
	})
	if err != nil {
		return c, err
	}
	if err := writeSpec(p.bundle(), spec); err != nil {
		return c, err
	}
	if err := e.save(c); err != nil {
		return c, err
	}
	pid, err := monitor.Start(monitor.Config{
		Argv: e.rt.RunArgs(id, p.bundle(), p.pidFile(), p.rtLog()), PidFile: p.pidFile(),
		LogFile: p.log(), ExitFile: p.exitFile(), ErrFile: p.rtLog(),
	})
	if err != nil {
		return c, fmt.Errorf("start container %s: %w", o.Name, err)
	}
	c.Status, c.Pid = StatusRunning, pid
	return c, nil
}

// annotations identify the container to every tool that reads spec.dump,
// and carry its labels (so an opt-out survives a checkpoint and restore).
func (e *Engine) annotations(c *Container) map[string]string {
	a := map[string]string{}
	for k, v := range c.Labels {
		a[k] = v
	}
	for k, v := range map[string]string{
		"io.container.manager":                       archive.Engine,
		metadata.CheckpointAnnotationEngine:          archive.Engine,
		metadata.CheckpointAnnotationName:            c.Name,
		metadata.CheckpointAnnotationRootfsImageName: c.Image,
		metadata.CheckpointAnnotationRootfsImageID:   c.ImageID,
		// checkpointctl names containers of engines it does not know by this.
		"io.kubernetes.cri.container-name": c.Name,
	} {
		a[k] = v
	}
	return a
}

func writeSpec(bundle string, s *specs.Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600)
}

// readSpec reads back what writeSpec wrote.
func readSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w", bundle, err)
	}
	return &s, nil
}

// discard undoes a half-made container: runtime state, mount and files.
func (e *Engine) discard(ctx context.Context, c *Container) {
	p := e.paths(c.ID)
	e.release(ctx, c)
	os.RemoveAll(p.dir)
	os.RemoveAll(p.run)
}

// Stop sends SIGTERM, then SIGKILL after timeout, and releases the runtime
// state and the rootfs mount. The container's files stay until Remove.
func (e *Engine) Stop(ctx context.Context, ref string, timeout time.Duration) error {
	c, unlock, err := e.getLocked(ctx, ref)
	if err != nil {
		return err
	}
	defer unlock()
	return e.stop(ctx, c, timeout)
}

func (e *Engine) stop(ctx context.Context, c *Container, timeout time.Duration) error {
	if c.Running() {
		if c.Status == StatusPaused {
			e.rt.Resume(ctx, c.ID)
		}
		if timeout > 0 {
			if err := e.rt.Kill(ctx, c.ID, "TERM"); err != nil && !errors.Is(err, runc.ErrNotExist) {
				return fmt.Errorf("stop %s: %w", c.Name, err)
			}
			e.waitExit(ctx, c, timeout)
		}
		e.refresh(ctx, c)
		if c.Running() {
			if err := e.rt.Kill(ctx, c.ID, "KILL"); err != nil && !errors.Is(err, runc.ErrNotExist) {
				return fmt.Errorf("kill %s: %w", c.Name, err)
			}
			e.waitExit(ctx, c, 10*time.Second)
		}
	}
	return e.release(ctx, c)
}

// waitExit waits until the monitor has recorded the exit (so the log is
// complete) or timeout passes.
func (e *Engine) waitExit(ctx context.Context, c *Container, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if monitor.ReadExit(e.paths(c.ID).exitFile()) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Remove deletes a container and its files. A running container is refused
// unless force, which kills it first.
func (e *Engine) Remove(ctx context.Context, ref string, force bool) error {
	c, unlock, err := e.getLocked(ctx, ref)
	if err != nil {
		return err
	}
	defer unlock()
	if c.Running() && !force {
		return fmt.Errorf("container %s is %s: stop it first or use --force", c.Name, c.Status)
	}
	if err := e.stop(ctx, c, 0); err != nil {
		return err
	}
	p := e.paths(c.ID)
	if err := os.RemoveAll(p.dir); err != nil {
		return err
	}
	os.RemoveAll(p.run)
	os.Remove(filepath.Join(e.runRoot, "lock-"+c.ID))
	return nil
}

// Exec runs a command inside a running container.
func (e *Engine) Exec(ctx context.Context, ref string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c, err := e.Get(ctx, ref)
	if err != nil {
		return 0, err
	}
	if c.Status != StatusRunning {
		return 0, fmt.Errorf("container %s is %s, not running", c.Name, c.Status)
	}
	return e.rt.Exec(ctx, c.ID, args, nil, stdin, stdout, stderr)
}

// LogsOptions say which of a container's output Logs copies.
type LogsOptions struct {
	// Tail, when positive, copies only the last Tail lines.
	Tail int
	// Follow goes on copying what the container writes until it stops
	// running (or ctx is done).
	Follow bool
}

// followPoll is how often Logs looks for more output while following.
const followPoll = 100 * time.Millisecond

// Logs copies the container's output to w.
func (e *Engine) Logs(ctx context.Context, ref string, w io.Writer, o LogsOptions) error {
	c, err := e.Get(ctx, ref)
	if err != nil {
		return err
	}
	f, err := os.Open(e.paths(c.ID).log())
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if o.Tail > 0 {
		off, err := tailOffset(f, o.Tail)
		if err != nil {
			return err
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return err
		}
	}
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !o.Follow {
			return nil
		}
		// What it wrote before it stopped is copied once more, then done.
		// The monitor's exit file says it stopped, without asking runc.
		if !c.Running() || monitor.ReadExit(e.paths(c.ID).exitFile()) != nil {
			_, err := io.Copy(w, f)
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followPoll):
		}
	}
}

// tailOffset is where the last n lines of f begin (a last line without
// its newline counts).
func tailOffset(f *os.File, n int) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	end := fi.Size()
	buf := make([]byte, 64<<10)
	seen := 0
	for pos := end; pos > 0; {
		k := min(int64(len(buf)), pos)
		pos -= k
		if _, err := f.ReadAt(buf[:k], pos); err != nil {
			return 0, err
		}
		for i := k - 1; i >= 0; i-- {
			if buf[i] != '\n' || pos+i == end-1 {
				continue
			}
			if seen++; seen == n {
				return pos + i + 1, nil
			}
		}
	}
	return 0, nil
}
