// Package engine is container lifecycle on one node. It is the only place
// that knows the order of the steps: it composes the image store, the
// rootfs overlay, the OCI runtime, the monitor, the archive format and the
// checkpoint store, each of which knows nothing of the others.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/flock"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/monitor"
	"github.com/stasis-dev/stasis/pkg/netns"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/rootfs"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/store"
)

// ErrNotFound is returned for an unknown container.
var ErrNotFound = errors.New("no such container")

// Options configure an Engine.
type Options struct {
	Root    string // persistent state, e.g. /var/lib/stasis
	RunRoot string // runtime state, e.g. /run/stasis
	Runtime string // OCI runtime binary, "runc" by default
	// Identities open encrypted checkpoints (the node's age keys).
	Identities []age.Identity
	// DecryptionKeys open encrypted checkpoint images (private keys, PEM).
	DecryptionKeys [][]byte
	// MaxUnpack bounds what unpacking one checkpoint may write, in bytes,
	// below the free space of the filesystem less 5 % (0: just that).
	MaxUnpack int64
	// Trust, when set, is the keys whose signatures admit a checkpoint
	// image (see pkg/provenance): every checkpoint image is verified
	// before any of its layer is fetched or unpacked, and Prepare takes
	// only checkpoint images. Nil verifies nothing.
	Trust *provenance.Trust
}

// Engine manages containers under one root.
type Engine struct {
	root, runRoot  string
	identities     []age.Identity
	decryptionKeys [][]byte
	maxUnpack      int64
	trust          *provenance.Trust
	Images         *image.Store
	Checkpoints    store.Store
	rt             Runtime
	// criuVersion finds CRIU and refuses one that cannot work here
	// (criu.Check); tests without CRIU stand in for it.
	criuVersion func() (string, error)
}

// New opens the state under o.Root, creating it if needed.
func New(o Options) (*Engine, error) {
	if o.Runtime == "" {
		o.Runtime = "runc"
	}
	for _, d := range []string{filepath.Join(o.Root, "containers"), filepath.Join(o.Root, "work"), o.RunRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	imgs, err := image.Open(filepath.Join(o.Root, "images"))
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	ck, err := store.NewDir(filepath.Join(o.Root, "checkpoints"))
	if err != nil {
		return nil, fmt.Errorf("open checkpoint store: %w", err)
	}
	return &Engine{
		root: o.Root, runRoot: o.RunRoot, identities: o.Identities, decryptionKeys: o.DecryptionKeys, maxUnpack: o.MaxUnpack, trust: o.Trust, Images: imgs, Checkpoints: ck,
		rt:          &runc.Runtime{Binary: o.Runtime, Root: filepath.Join(o.RunRoot, "runtime")},
		criuVersion: criu.Check,
	}, nil
}

// ErrBusy is returned when another operation holds the container.
var ErrBusy = errors.New("busy with another operation")

// Container is the persistent record of a container.
type Container struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Image    string    `json:"image"`
	ImageID  string    `json:"imageID"`
	Args     []string  `json:"args"`
	Network  string    `json:"network"`
	Created  time.Time `json:"created"`
	Restored bool      `json:"restored,omitempty"`
	// Labels are the user's; stasis.dev/checkpoint and stasis.dev/migrate
	// set to "never" opt the container out (see pkg/policy).
	Labels map[string]string `json:"labels,omitempty"`
	// Checkpointed is set when a checkpoint stopped the container.
	Checkpointed time.Time `json:"checkpointed,omitempty"`

	// Status, Pid and ExitCode are derived on read, never stored.
	Status   Status `json:"-"`
	Pid      int    `json:"-"`
	ExitCode *int   `json:"-"`
}

// paths of one container.
type paths struct{ dir, run string }

func (e *Engine) paths(id string) paths {
	return paths{dir: filepath.Join(e.root, "containers", id), run: filepath.Join(e.runRoot, "containers", id)}
}
func (p paths) record() string   { return filepath.Join(p.dir, "container.json") }
func (p paths) bundle() string   { return filepath.Join(p.dir, "bundle") }
func (p paths) log() string      { return filepath.Join(p.dir, "ctr.log") }
func (p paths) etc() string      { return filepath.Join(p.dir, "etc") }
func (p paths) pidFile() string  { return filepath.Join(p.run, "pid") }
func (p paths) exitFile() string { return filepath.Join(p.run, "exit") }
func (p paths) rtLog() string    { return filepath.Join(p.run, "runtime.log") }

// netns is the bind mount keeping a network-none container's namespace.
func (p paths) netns() string { return filepath.Join(p.run, "netns") }

// lazyPagesPid names the lazy-pages helper of a lazily restored container.
func (p paths) lazyPagesPid() string { return filepath.Join(p.run, "lazy-pages.pid") }
func (p paths) layout(lower string) rootfs.Layout {
	return rootfs.NewLayout(lower, filepath.Join(p.dir, "fs"))
}

func (e *Engine) save(c *Container) error {
	p := e.paths(c.ID)
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.record()+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p.record()+".tmp", p.record())
}

func (e *Engine) load(id string) (*Container, error) {
	b, err := os.ReadFile(e.paths(id).record())
	if err != nil {
		return nil, err
	}
	var c Container
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("container %s record: %w", id, err)
	}
	return &c, nil
}

// records loads every container record, without asking the runtime about
// any: lookups use it so that finding one container costs one runtime call,
// not one per container.
func (e *Engine) records() ([]*Container, error) {
	ents, err := os.ReadDir(filepath.Join(e.root, "containers"))
	if err != nil {
		return nil, err
	}
	var out []*Container
	for _, de := range ents {
		c, err := e.load(de.Name())
		if err != nil {
			continue // half-created or foreign: not listed
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// List returns all containers with their current status, oldest first.
func (e *Engine) List(ctx context.Context) ([]*Container, error) {
	all, err := e.records()
	if err != nil {
		return nil, err
	}
	for _, c := range all {
		e.refresh(ctx, c)
	}
	return all, nil
}

// Get finds a container by name, ID or unique ID prefix.
func (e *Engine) Get(ctx context.Context, ref string) (*Container, error) {
	all, err := e.records()
	if err != nil {
		return nil, err
	}
	var match *Container
	for _, c := range all {
		if c.Name == ref || c.ID == ref {
			match = c
			break
		}
		if len(ref) >= 6 && strings.HasPrefix(c.ID, ref) {
			if match != nil {
				return nil, fmt.Errorf("container ID prefix %s is ambiguous", ref)
			}
			match = c
		}
	}
	if match == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	e.refresh(ctx, match)
	return match, nil
}

// getLocked is Get followed by the container's lock; the status is read
// again under the lock, so it cannot change before the caller acts on it.
func (e *Engine) getLocked(ctx context.Context, ref string) (*Container, func(), error) {
	c, err := e.Get(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	unlock, err := e.lock(c.ID)
	if err != nil {
		return nil, nil, err
	}
	e.refresh(ctx, c)
	return c, unlock, nil
}

// release makes the runtime forget the container and unmounts its rootfs;
// its files stay.
func (e *Engine) release(ctx context.Context, c *Container) error {
	if err := e.rt.Delete(ctx, c.ID, true); err != nil && !errors.Is(err, runc.ErrNotExist) {
		return fmt.Errorf("delete %s from runtime: %w", c.Name, err)
	}
	if err := netns.Remove(e.paths(c.ID).netns()); err != nil {
		return err
	}
	return e.paths(c.ID).layout("").Unmount()
}

// refresh fills in Status and Pid from the runtime and the monitor.
func (e *Engine) refresh(ctx context.Context, c *Container) {
	p := e.paths(c.ID)
	st, err := e.rt.State(ctx, c.ID)
	switch {
	case err == nil && st.Status != runc.Stopped:
		c.Status, c.Pid = Status(st.Status), st.Pid
	case !c.Checkpointed.IsZero():
		c.Status = StatusCheckpointed
	default:
		c.Status = StatusExited
		if x := monitor.ReadExit(p.exitFile()); x != nil {
			c.ExitCode = &x.Code
		}
	}
}

// Running reports whether the container's processes are alive.
func (c *Container) Running() bool { return c.Status.Running() }

// Running reports whether the status is one of a container whose
// processes exist: running or paused.
func (s Status) Running() bool { return s == StatusRunning || s == StatusPaused }

// Status is a container's state as stasis reports it: the OCI runtime's
// while it has processes, else checkpointed or exited.
type Status string

const (
	StatusCreated             = Status(runc.Created)
	StatusRunning             = Status(runc.Running)
	StatusPaused              = Status(runc.Paused)
	StatusCheckpointed Status = "checkpointed"
	StatusExited       Status = "exited"
)

// Describe is the status as `ps` shows it: "exited (1)", "running (restored)".
func (c *Container) Describe() string {
	s := string(c.Status)
	if c.Status == StatusExited && c.ExitCode != nil {
		s = fmt.Sprintf("%s (%d)", s, *c.ExitCode)
	}
	if c.Restored {
		s += " (restored)"
	}
	return s
}

// lock takes an exclusive lock for operations on one container, or on the
// set of names when id is "". It fails fast rather than queueing, so two
// checkpoints of one container do not silently run one after the other.
func (e *Engine) lock(id string) (func(), error) {
	name := filepath.Join(e.root, ".names.lock")
	if id != "" {
		name = filepath.Join(e.runRoot, "lock-"+id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := flock.TryLock(name)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, flock.ErrLocked) || id != "" || time.Now().After(deadline) {
			if errors.Is(err, flock.ErrLocked) {
				return nil, fmt.Errorf("container %s: %w", id, ErrBusy)
			}
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// nameFree fails if a container already has the name.
func (e *Engine) nameFree(ctx context.Context, name string) error {
	if name == "" || strings.ContainsAny(name, "/\\ \t\n") {
		return fmt.Errorf("invalid container name %q", name)
	}
	all, err := e.records()
	if err != nil {
		return err
	}
	for _, c := range all {
		if c.Name == name {
			return fmt.Errorf("the container name %q is already in use by %s", name, c.ID[:12])
		}
	}
	return nil
}

// writeEtc writes the files bind-mounted over /etc/hosts, /etc/hostname and
// (with the host network) /etc/resolv.conf and returns their mapping.
func writeEtc(dir, hostname, network string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"/etc/hostname": []byte(hostname + "\n"),
		"/etc/hosts":    []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + hostname + "\n"),
	}
	// Without a network there is no resolver to name, and Podman then
	// mounts no resolv.conf either: the same mounts keep archives portable.
	if network == runc.NetworkHost {
		files["/etc/resolv.conf"], _ = os.ReadFile("/etc/resolv.conf")
	}
	m := map[string]string{}
	for dst, data := range files {
		src := filepath.Join(dir, filepath.Base(dst))
		if err := os.WriteFile(src, data, 0o644); err != nil {
			return nil, err
		}
		m[dst] = src
	}
	return m, nil
}

// TempFile creates a file in stasis' work directory (an upload, for one).
func (e *Engine) TempFile(pattern string) (*os.File, error) {
	return os.CreateTemp(filepath.Join(e.root, "work"), pattern)
}

// WorkDir makes a scratch directory in stasis' work directory, locked
// while in use so that Recover (after a crash) removes it only once
// abandoned; done removes it.
func (e *Engine) WorkDir(prefix string) (dir string, done func(), err error) {
	dir, lock, err := e.workDir(prefix)
	if err != nil {
		return "", nil, err
	}
	return dir, func() { lock.Close(); os.RemoveAll(dir) }, nil
}
