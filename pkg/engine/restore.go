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
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/monitor"
	"github.com/stasis-dev/stasis/pkg/netns"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runtime"
	"github.com/stasis-dev/stasis/pkg/store"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// RestoreOptions say what to restore and as what.
type RestoreOptions struct {
	// Container names a container (or, once it is removed, the container
	// name of stored checkpoints) whose latest checkpoint is restored in place.
	Container string
	// Import is an archive file to restore from instead.
	Import string
	// Name is the restored container's name; by default the checkpointed one.
	Name           string
	TCPEstablished bool
	FileLocks      bool
	// LazyPages starts the container before its memory is restored: pages
	// come in on first touch and in the background (criu.LazyPages).
	LazyPages bool
	// Registry is how to pull a checkpoint image, and a base image the
	// store lacks.
	Registry registry.Options
	// Checkpoint picks a stored checkpoint of Container by ID instead of
	// its latest (a rewind).
	Checkpoint string
	// ImportDigest is the sha256 the Import archive must have; by default
	// the one recorded beside it (archive.DigestSuffix), if any.
	ImportDigest string
	// Volumes give the sources of the checkpoint's bind mounts, by
	// destination. A checkpoint from elsewhere needs one for each bind
	// mount stasis does not provide itself (see confineSpec).
	Volumes []runtime.Mount
	// Privileged takes host namespaces, capabilities, devices, seccomp and
	// security labels from a checkpoint made elsewhere as it recorded them.
	Privileged bool
}

// RestoreResult reports a restore.
type RestoreResult struct {
	Container string             `json:"container"`
	ID        string             `json:"id"`
	Pid       int                `json:"pid"`
	CRIU      *criu.RestoreStats `json:"criu,omitempty"`
	Phases    Phases             `json:"phases_us"`
}

// Restore brings a checkpoint back to life. On failure nothing of the new
// container is left, and a container restored in place stays checkpointed.
func (e *Engine) Restore(ctx context.Context, o RestoreOptions) (*RestoreResult, error) {
	var pulled []string
	res, err := e.restore(ctx, o, &pulled)
	if err != nil {
		// A failed restore leaves the image store as it found it.
		for _, name := range pulled {
			e.Images.Remove(name)
		}
	}
	return res, err
}

// restore does the work of Restore, adding to pulled the images it pulls.
func (e *Engine) restore(ctx context.Context, o RestoreOptions, pulled *[]string) (*RestoreResult, error) {
	start := time.Now()
	if _, err := criu.Check(); err != nil {
		return nil, err
	}
	from, err := e.restoreSource(ctx, o, pulled)
	if err != nil {
		return nil, err
	}
	res := &RestoreResult{Phases: Phases{}}

	work, lock, err := e.workDir("restore-")
	if err != nil {
		return nil, err
	}
	// A lazy restore hands the work directory, which holds the pages still
	// to come, to the lazy-pages server once the restore succeeded; the
	// server inherits the lock.
	keepWork := false
	defer func() {
		lock.Close()
		if !keepWork {
			os.RemoveAll(work)
		}
	}()
	t := time.Now()
	src, existing, fromImage := from.archive, from.existing, from.image
	dir, err := e.extract(ctx, from, work)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	res.Phases.add("extract", time.Since(t))
	cfg, err := dir.Config()
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	spec, err := dir.Spec()
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if from.stored {
		err = applyVolumes(spec, o.Volumes)
	} else {
		spec, err = confineSpec(spec, o.Volumes, o.Privileged)
	}
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", src, err)
	}
	deleted, err := dir.Deleted()
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := rootfs.ValidateDeleted(deleted); err != nil {
		return nil, fmt.Errorf("restore: archive %s is unsafe: %w", src, err)
	}
	baseDigest := ""
	if fromImage != nil {
		baseDigest = fromImage.BaseImageDigest
	}
	img, err := e.ensureBaseImage(ctx, cfg, baseDigest, o.Registry, pulled)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	lower, err := e.Images.Rootfs(img)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}

	unlock, err := e.lock("")
	if err != nil {
		return nil, err
	}
	defer unlock()
	var c *Container
	if existing != nil {
		c = existing
		unlockC, err := e.lock(c.ID)
		if err != nil {
			return nil, err
		}
		defer unlockC()
		e.refresh(ctx, c)
		if c.Running() {
			return nil, fmt.Errorf("restore %s: container is %s; stop it, or restore under another --name", c.Name, c.Status)
		}
		// In place: the runtime forgets the old instance; its rootfs is
		// rebuilt from the archive.
		if err := e.release(ctx, c); err != nil {
			return nil, fmt.Errorf("restore %s: %w", c.Name, err)
		}
		p := e.paths(c.ID)
		os.RemoveAll(filepath.Join(p.dir, "fs"))
		os.Remove(p.exitFile())
	} else {
		name := o.Name
		if name == "" {
			name = cfg.Name
		}
		if err := e.nameFree(ctx, name); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		c = &Container{ID: newID(), Name: name, Created: time.Now().UTC()}
	}
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
	c.Network = runtime.NetworkHost
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			c.Network = runtime.NetworkNone
		}
	}

	pid, lazy, err := e.restoreInto(ctx, c, lower, dir, spec, deleted, o, res, lock)
	if err != nil {
		err = fmt.Errorf("restore %s: %w", c.Name, err)
		if existing == nil {
			e.discard(context.WithoutCancel(ctx), c)
		} else {
			// It stays checkpointed, restorable once the cause is fixed;
			// if even that fails, the caller must hear it.
			c.Checkpointed = time.Now().UTC()
			if rerr := e.release(context.WithoutCancel(ctx), c); rerr != nil {
				err = errors.Join(err, fmt.Errorf("and releasing it: %w", rerr))
			}
			if serr := e.save(c); serr != nil {
				err = errors.Join(err, fmt.Errorf("and keeping it checkpointed: %w", serr))
			}
		}
		return nil, err
	}
	res.Container, res.ID, res.Pid = c.Name, c.ID, pid
	if st, err := criu.ReadRestoreStats(work); err == nil {
		res.CRIU = st
	}
	if lazy != nil {
		lazy.Detach()
		keepWork = true
	}
	res.Phases.add("total", time.Since(start))
	return res, nil
}

// source is where a restore or an inspection reads a checkpoint from.
type source struct {
	archive string
	// digest, when known, is what the archive's bytes must hash to.
	digest string
	// rootfsDiff is a stored checkpoint's shared rootfs diff, kept beside
	// its archive (store.Entry.RootfsDiff).
	rootfsDiff string
	// existing is the container an in-place restore brings back.
	existing *Container
	// image is what a checkpoint image says about itself.
	image *checkpointimage.Info
	// encryptedLayer describes the layer of an encrypted checkpoint
	// image: the archive must be decrypted first.
	encryptedLayer *v1.Descriptor
	// stored is set for a checkpoint this node's store made: its spec.dump
	// is stasis' own. Any other is restored into a spec of stasis' making.
	stored bool
}

// extract unpacks a checkpoint into work, checking its digest when known,
// decrypting it with the engine's identities, adding a shared rootfs diff.
func (e *Engine) extract(ctx context.Context, src *source, work string) (archive.Dir, error) {
	ro := archive.ReadOptions{Identities: e.identities, Digest: src.digest, MaxUnpack: e.maxUnpack}
	if src.encryptedLayer != nil {
		plain := filepath.Join(work, ".decrypted-layer")
		if err := checkpointimage.Decrypt(src.archive, *src.encryptedLayer, e.decryptionKeys, plain); err != nil {
			return "", err
		}
		defer os.Remove(plain)
		// Decrypt checked the plain layer's digest.
		ro.Digest = ""
		return archive.Extract(ctx, plain, work, ro)
	}
	dir, err := archive.Extract(ctx, src.archive, work, ro)
	if err != nil || src.rootfsDiff == "" {
		return dir, err
	}
	if err := os.Link(src.rootfsDiff, dir.RootfsDiff()); err != nil {
		return "", fmt.Errorf("rootfs diff of %s: %w", src.archive, err)
	}
	return dir, nil
}

// blobDigest is the digest a content-addressed blob's name says it has.
func blobDigest(path string) string {
	return "sha256:" + filepath.Base(path)
}

// restoreSource finds the checkpoint to restore: an --import file, the
// latest (or a chosen) stored checkpoint of a container, with the container
// for an in-place restore, or a checkpoint image, local or pulled.
func (e *Engine) restoreSource(ctx context.Context, o RestoreOptions, pulled *[]string) (*source, error) {
	if o.Import != "" {
		if o.Container != "" {
			return nil, errors.New("restore: give either a container or --import, not both")
		}
		if _, err := os.Stat(o.Import); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		digest := o.ImportDigest
		if digest == "" {
			var err error
			if digest, err = archive.ReadDigestFile(o.Import); err != nil {
				return nil, fmt.Errorf("restore: %w", err)
			}
		}
		return &source{archive: o.Import, digest: digest}, nil
	}
	if o.Container == "" {
		return nil, errors.New("restore: name a container, a checkpoint image, or give --import ARCHIVE")
	}
	c, err := e.Get(ctx, o.Container)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	key := o.Container
	if c != nil {
		key = c.ID
	}
	ent, serr := store.Latest(e.Checkpoints, key)
	if serr != nil && c != nil {
		ent, serr = store.Latest(e.Checkpoints, c.Name)
	}
	if o.Checkpoint != "" {
		ent, serr = e.Checkpoints.Get(o.Checkpoint)
	}
	if serr != nil {
		if c != nil {
			return nil, fmt.Errorf("restore %s: %w", o.Container, serr)
		}
		src, ierr := e.checkpointImageArchive(ctx, o.Container, o.Registry, pulled, nil)
		if ierr != nil {
			return nil, fmt.Errorf("restore %s: no container or stored checkpoint of that name, and as a checkpoint image: %w", o.Container, ierr)
		}
		return src, nil
	}
	if c != nil && o.Name != "" && o.Name != c.Name {
		c = nil // a copy under a new name, the original untouched
	}
	return &source{archive: ent.Archive, digest: ent.Digest, rootfsDiff: ent.RootfsDiff, existing: c, stored: true}, nil
}

func (e *Engine) restoreInto(ctx context.Context, c *Container, lower string, dir archive.Dir, spec *specs.Spec,
	deleted []string, o RestoreOptions, res *RestoreResult, workLock *os.File) (pid int, lazy *criu.LazyPagesServer, err error) {
	p := e.paths(c.ID)
	for _, d := range []string{p.bundle(), p.run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return 0, nil, err
		}
	}
	t := time.Now()
	lay := p.layout(lower)
	if err := lay.Mount(); err != nil {
		return 0, nil, err
	}
	if err := applyRootfs(ctx, dir, lay.Merged, deleted, e.maxUnpack); err != nil {
		return 0, nil, err
	}
	res.Phases.add("rootfs", time.Since(t))

	if err := e.adaptSpec(ctx, c, spec, lay.Merged, dir); err != nil {
		return 0, nil, err
	}
	if err := writeSpec(p.bundle(), spec); err != nil {
		return 0, nil, err
	}
	if err := e.save(c); err != nil {
		return 0, nil, err
	}
	t = time.Now()
	opts := runtime.CheckpointOptions{
		ImagePath: dir.Images(), WorkPath: string(dir), TCPEstablished: o.TCPEstablished, FileLocks: o.FileLocks,
		LazyPages: o.LazyPages,
	}
	if o.LazyPages {
		lazy, err = criu.StartLazyPages(criu.LazyPages{
			Images: dir.Images(), Work: string(dir), LogDir: filepath.Join(e.root, "logs"),
		}, workLock)
		if err != nil {
			return 0, nil, err
		}
		if err := os.WriteFile(p.lazyPagesPid(), []byte(strconv.Itoa(lazy.Pid())), 0o600); err != nil {
			lazy.Stop()
			return 0, nil, err
		}
	}
	pid, err = monitor.Start(monitor.Config{
		Argv: e.rt.RestoreArgs(c.ID, p.bundle(), p.pidFile(), p.rtLog(), opts), PidFile: p.pidFile(),
		LogFile: p.log(), ExitFile: p.exitFile(), ErrFile: p.rtLog(),
	})
	if err != nil {
		if lazy != nil {
			lazy.Stop()
		}
		return 0, nil, fmt.Errorf("%w%s", err, e.criuErrors(filepath.Join(string(dir), archive.RestoreLog)))
	}
	res.Phases.add("criu_restore", time.Since(t))
	return pid, lazy, nil
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
	spec.Linux.CgroupsPath = runtime.CgroupsPath(c.ID)
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
