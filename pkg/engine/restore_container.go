package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/monitor"
	"github.com/stasis-dev/stasis/pkg/netns"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// containerTarget restores into one of the engine's containers: existing,
// in place (its rootfs rebuilt from the archive), or a new one.
type containerTarget struct {
	o        RestoreOptions
	src      *source
	existing *Container
	// c is the container restored into, once known.
	c *Container
	// created is set when c is new: a failure removes it.
	created bool
	spec    *specs.Spec
	root    string // its rootfs, mounted
	unlocks []func()
}

func (t *containerTarget) close() {
	for i := len(t.unlocks) - 1; i >= 0; i-- {
		t.unlocks[i]()
	}
}

func (t *containerTarget) ignoresRootfs() bool { return t.o.IgnoreRootfs }

func (t *containerTarget) prepare(ctx context.Context, e *Engine, ck *unpacked) (string, error) {
	cfg, err := ck.Config()
	if err != nil {
		return "", err
	}
	spec, err := ck.Spec()
	if err != nil {
		return "", err
	}
	if t.src.stored {
		err = applyVolumes(spec, t.o.Volumes)
	} else {
		spec, err = confineSpec(spec, t.o.Volumes, t.o.Privileged)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", t.src.archive, err)
	}
	t.spec = spec
	img, err := e.ensureBaseImage(ctx, cfg, t.src, t.o.Registry)
	if err != nil {
		return "", err
	}
	lower, err := e.Images.Rootfs(img)
	if err != nil {
		return "", err
	}
	if err := t.claim(ctx, e, cfg.Name); err != nil {
		return "", err
	}
	c := t.c
	c.Image, c.ImageID, c.Args, c.Restored, c.Checkpointed = img.Name, img.ID, spec.Process.Args, true, time.Time{}
	// The opt-outs come back with the container, from its annotations
	// (where Kubernetes puts a pod's, too).
	for k, v := range spec.Annotations {
		if strings.HasPrefix(k, "stasis.dev/") {
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[k] = v
		}
	}
	c.Network = runc.NetworkHost
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			c.Network = runc.NetworkNone
		}
	}
	p := e.paths(c.ID)
	for _, d := range []string{p.bundle(), p.run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", err
		}
	}
	lay := p.layout(lower)
	if err := lay.Mount(); err != nil {
		return "", err
	}
	t.root = lay.Merged
	return t.root, nil
}

// claim takes the container restored into, under the lock on names: the
// existing one (which must not run) or a new one of a free name.
func (t *containerTarget) claim(ctx context.Context, e *Engine, checkpointed string) error {
	unlock, err := e.lock("")
	if err != nil {
		return err
	}
	t.unlocks = append(t.unlocks, unlock)
	if c := t.existing; c != nil {
		unlockC, err := e.lock(c.ID)
		if err != nil {
			return err
		}
		t.unlocks = append(t.unlocks, unlockC)
		e.refresh(ctx, c)
		if c.Running() {
			return fmt.Errorf("container %s is %s; stop it, or restore under another --name", c.Name, c.Status)
		}
		// In place: the runtime forgets the old instance; its rootfs is
		// rebuilt from the archive.
		if err := e.release(ctx, c); err != nil {
			return err
		}
		t.c = c
		p := e.paths(c.ID)
		os.RemoveAll(filepath.Join(p.dir, "fs"))
		os.Remove(p.exitFile())
		return nil
	}
	name := t.o.Name
	if name == "" {
		name = checkpointed
	}
	if err := e.nameFree(ctx, name); err != nil {
		return err
	}
	t.c = &Container{ID: newID(), Name: name, Created: time.Now().UTC()}
	t.created = true
	return nil
}

func (t *containerTarget) configure(ctx context.Context, e *Engine, ck *unpacked) error {
	p := e.paths(t.c.ID)
	if err := e.adaptSpec(ctx, t.c, t.spec, t.root, ck.Dir); err != nil {
		return err
	}
	if err := writeSpec(p.bundle(), t.spec); err != nil {
		return err
	}
	return e.save(t.c)
}

func (t *containerTarget) start(ctx context.Context, e *Engine, ck *unpacked, o runc.RestoreOptions, lazy *criu.LazyPagesServer) (int, error) {
	p := e.paths(t.c.ID)
	if lazy != nil {
		// A checkpoint of the container waits for the server (waitLazyPages).
		if err := os.WriteFile(p.lazyPagesPid(), []byte(strconv.Itoa(lazy.Pid())), 0o600); err != nil {
			return 0, err
		}
	}
	o.Bundle, o.PidFile, o.LogFile = p.bundle(), p.pidFile(), p.rtLog()
	pid, err := monitor.Start(monitor.Config{
		Argv: e.rt.RestoreArgs(t.c.ID, o), PidFile: p.pidFile(),
		LogFile: p.log(), ExitFile: p.exitFile(), ErrFile: p.rtLog(),
	})
	if err != nil {
		return 0, fmt.Errorf("%w%s", err, e.criuErrors(filepath.Join(string(ck.Dir), archive.RestoreLog)))
	}
	return pid, nil
}

// abort removes a new container; one restored in place stays
// checkpointed, restorable once the cause is fixed, and if even that
// fails, the caller must hear it.
func (t *containerTarget) abort(ctx context.Context, e *Engine) error {
	c := t.c
	switch {
	case c == nil:
		return nil
	case t.created:
		e.discard(ctx, c)
		return nil
	}
	c.Checkpointed = time.Now().UTC()
	var errs []error
	if err := e.release(ctx, c); err != nil {
		errs = append(errs, fmt.Errorf("and releasing it: %w", err))
	}
	if err := e.save(c); err != nil {
		errs = append(errs, fmt.Errorf("and keeping it checkpointed: %w", err))
	}
	return errors.Join(errs...)
}

// adaptSpec turns the checkpointed container's spec (stasis', Podman's or
// CRI-O's) into one for this container on this host: new rootfs and
// cgroup, the host files stasis provides, no hooks of another engine.
func (e *Engine) adaptSpec(ctx context.Context, c *Container, spec *specs.Spec, rootfsDir string, dir archive.Dir) error {
	p := e.paths(c.ID)
	spec.Root = &specs.Root{Path: rootfsDir}
	spec.Hooks = nil
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	spec.Linux.CgroupsPath = runc.CgroupsPath(c.ID)
	if spec.Process.OOMScoreAdj != nil && *spec.Process.OOMScoreAdj < 0 {
		spec.Process.OOMScoreAdj = nil // lowering it needs CAP_SYS_RESOURCE
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			// A namespace of stasis' own with loopback up (see pkg/netns),
			// in place of whatever the checkpointing engine had.
			if err := netns.New(p.netns()); err != nil {
				return err
			}
			spec.Linux.Namespaces[i].Path = p.netns()
			continue
		}
		if ns.Path != "" {
			return fmt.Errorf("the checkpoint joined an existing %s namespace (%s), which stasis cannot provide", ns.Type, ns.Path)
		}
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = c.Name
	}
	etc, err := writeEtc(p.etc(), hostname, c.Network)
	if err != nil {
		return err
	}
	for i, m := range spec.Mounts {
		if m.Type != "bind" && !contains(m.Options, "bind") && !contains(m.Options, "rbind") {
			continue
		}
		switch {
		case etc[m.Destination] != "":
			spec.Mounts[i].Source = etc[m.Destination]
		case m.Destination == "/run/.containerenv":
			// Podman's marker file; contents do not matter to a restore.
			f := filepath.Join(p.etc(), "containerenv")
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				return err
			}
			spec.Mounts[i].Source = f
		case m.Destination == "/dev/shm":
			// Podman bind-mounts a per-container tmpfs; an empty directory
			// holds what devshm-checkpoint.tar carries.
			shm := filepath.Join(p.dir, "shm")
			if err := os.MkdirAll(shm, 0o1777); err != nil {
				return err
			}
			if f, err := dir.OpenMember(metadata.DevShmCheckpointTar); err == nil {
				err = untar.Extract(ctx, f, shm, untar.Options{Kind: untar.Tree, MaxBytes: e.maxUnpack})
				f.Close()
				if err != nil {
					return fmt.Errorf("restore /dev/shm: %w", err)
				}
			}
			spec.Mounts[i].Source = shm
		default:
			if _, err := os.Stat(m.Source); err != nil {
				return fmt.Errorf("bind mount %s needs %s on this host: %w", m.Destination, m.Source, err)
			}
		}
	}
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	// The new rootfs' directories need not have the modes the checkpointed
	// one had (an engine whose rootfs "/" is 0755, not 0555 as stasis' and
	// containers/storage's), which CRIU would refuse; runc passes this
	// per-container CRIU config file on (it replaces /etc/criu/runc.conf).
	conf := filepath.Join(p.dir, "criu.conf")
	if err := os.WriteFile(conf, []byte("skip-file-rwx-check\n"), 0o600); err != nil {
		return err
	}
	spec.Annotations["org.criu.config"] = conf
	for k, v := range e.annotations(c) {
		if k == "io.container.manager" && spec.Annotations[k] != "" {
			continue // keep the original engine's marker
		}
		spec.Annotations[k] = v
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
