// Package runtimeclass is the OCI runtime that the RuntimeClass "stasis" selects
// on a node: a thin wrapper around runc. For a container whose pod names a
// grant (the annotation restore.stasis.dev/from: Restore/<name> or
// WarmStart/<name>), it asks the node's agent which checkpoint that grant
// gives the container (the agent checks the grant with the API server),
// and turns `create` into engine.RestoreBundle: the checkpoint's signature
// verified against the keys this node trusts, then a CRIU restore into the
// bundle the shim (containerd) or conmon (CRI-O) prepared. The `start` that
// follows is a no-op. Every other call goes to runc untouched, by exec.
//
// Doing the restore here, not in the container runtime, is what makes it
// work the same on containerd 2.2 to 2.4 (2.4 removed its own restore path)
// and on CRI-O: both only ever see a runc that created a running container.
package runtimeclass

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// RecordFile, in a restored container's bundle, holds its Record.
const RecordFile = "stasis-restore.json"

// Annotations the CRI runtimes put on a container's spec naming it.
var containerNameAnnotations = []string{
	"io.kubernetes.cri.container-name", // containerd
	"io.kubernetes.container.name",     // CRI-O
}

// Record is what the wrapper did, kept in the bundle (RecordFile) for
// as long as the container: where from, how, and how long each step took.
type Record struct {
	Checkpoint string           `json:"checkpoint"`
	LazyPages  bool             `json:"lazyPages"`
	Phases     map[string]int64 `json:"phases"`
}

// startedMarker, in the bundle of a container the wrapper restored (which
// has a RecordFile), says that its `start` came: that call must not reach
// runc. Until then `state` reports "created", as after a runc create: CRI-O
// refuses to start a container that is running already.
const startedMarker = ".stasis-started"

// Config is the wrapper's configuration, read from DefaultConfigPath (or
// $STASIS_RUNTIME_CONFIG): shims start the runtime with no arguments of
// their own, so a file is the only way in.
type Config struct {
	// Runtime is the runc binary everything is handed to.
	Runtime string `json:"runtime,omitempty"`
	// Root and RunRoot are the node's stasis store, shared with the agent.
	Root    string `json:"root,omitempty"`
	RunRoot string `json:"runRoot,omitempty"`
	// TLSVerify false lets checkpoint images come from plain-HTTP
	// registries or ones whose certificate nobody signed.
	TLSVerify *bool `json:"tlsVerify,omitempty"`
	// Identities (age) and DecryptionKeys (PEM) are files that open
	// encrypted checkpoints and checkpoint images.
	Identities     []string `json:"identities,omitempty"`
	DecryptionKeys []string `json:"decryptionKeys,omitempty"`
	// LazyPages restores every container with lazy pages, as a grant's
	// lazyPages or the pod annotation stasis.dev/lazy-pages does for one pod.
	LazyPages bool `json:"lazyPages,omitempty"`
	// AgentSocket is the node agent's socket, which resolves grants
	// (default: RunRoot/agent.sock).
	AgentSocket string `json:"agentSocket,omitempty"`
	// ClusterKey is the public half of the cluster's checkpoint key (PEM):
	// what the agents sign checkpoints with. TrustedKeys are public keys
	// whose signed checkpoints (made by Podman, CRI-O, another cluster)
	// are restored too. With neither, nothing is restored.
	ClusterKey  string   `json:"clusterKey,omitempty"`
	TrustedKeys []string `json:"trustedKeys,omitempty"`
	// TrustedKeyDir holds more trusted public keys, a *.pub file each
	// (default /etc/stasis/trusted-keys: the agent DaemonSet copies the
	// ConfigMap stasis-trusted-keys there, so they survive its restarts).
	TrustedKeyDir string `json:"trustedKeyDir,omitempty"`
	// MaxUnpack bounds what unpacking one checkpoint may write, in bytes
	// (default and upper bound: the free space under Root less 5 %).
	MaxUnpack int64 `json:"maxUnpack,omitempty"`
}

// DefaultConfigPath is where the agent DaemonSet installs the config.
const DefaultConfigPath = "/etc/stasis/oci-runtime.json"

// LoadConfig reads the config file; a missing file means the defaults.
func LoadConfig() (Config, error) {
	path := os.Getenv("STASIS_RUNTIME_CONFIG")
	if path == "" {
		path = DefaultConfigPath
	}
	var c Config
	b, err := os.ReadFile(path)
	switch {
	case os.IsNotExist(err):
	case err != nil:
		return c, err
	default:
		if err := json.Unmarshal(b, &c); err != nil {
			return c, fmt.Errorf("%s: %w", path, err)
		}
	}
	if c.Runtime == "" {
		c.Runtime = "runc"
	}
	if c.Root == "" {
		c.Root = "/var/lib/stasis"
	}
	if c.RunRoot == "" {
		c.RunRoot = "/run/stasis"
	}
	if c.AgentSocket == "" {
		c.AgentSocket = wire.NodeSocket(c.RunRoot)
	}
	if c.TrustedKeyDir == "" {
		c.TrustedKeyDir = "/etc/stasis/trusted-keys"
	}
	return c, nil
}

// Main runs the wrapper on runc's arguments (without argv[0]) and returns
// its exit code; pass-through calls never return.
func Main(argv []string) int {
	if len(argv) == 1 && argv[0] == criu.LazyPagesCommand {
		// The page server of a lazy restore, started by an earlier call.
		return engine.LazyPagesMain()
	}
	cfg, err := LoadConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "stasis-runc: %v\n", err)
		return 1
	}
	bin, err := exec.LookPath(cfg.Runtime)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stasis-runc: runtime %q: %v\n", cfg.Runtime, err)
		return 1
	}
	w := &wrapper{cfg: cfg, runc: bin}
	inv := parseInvocation(argv)
	switch inv.command {
	case "create":
		return w.create(inv)
	case "start":
		if st, ok := w.restored(inv); ok {
			// The restored process runs already; from now on, say so.
			if err := os.WriteFile(filepath.Join(st.Bundle, startedMarker), nil, 0o600); err != nil {
				return w.fail(inv, err)
			}
			return 0
		}
	case "state":
		if st, ok := w.restored(inv); ok {
			return w.state(st)
		}
	}
	return w.exec(argv)
}

type wrapper struct {
	cfg  Config
	runc string
}

// exec hands the call to runc, which replaces this process.
func (w *wrapper) exec(argv []string) int {
	err := syscall.Exec(w.runc, append([]string{"runc"}, argv...), os.Environ())
	fmt.Fprintf(os.Stderr, "stasis-runc: exec %s: %v\n", w.runc, err)
	return 1
}

func (w *wrapper) create(inv invocation) int {
	passThrough := func() int {
		return w.exec(append(append([]string{}, inv.globals...), append([]string{"create"}, inv.args...)...))
	}
	c, err := parseCreate(inv.args)
	if err != nil {
		return passThrough()
	}
	bundle, err := filepath.Abs(c.bundle)
	if err != nil {
		return w.fail(inv, err)
	}
	spec, err := readSpec(bundle)
	if err != nil {
		return w.fail(inv, err)
	}
	pod := podOf(spec)
	if pod.Container == "" || pod.Namespace == "" || pod.Name == "" {
		return passThrough() // the pod's sandbox, or not a Kubernetes container
	}
	if legacy := stasisv1.LegacyRestoreAnnotations(spec.Annotations); len(legacy) > 0 {
		return w.fail(inv, fmt.Errorf("stasis: container %s: pod annotation %s names a checkpoint directly, which is never honoured: "+
			"a pod restores only through a grant, %s: Restore/<name> or WarmStart/<name> (docs/kubernetes.md)",
			pod.Container, legacy[0], stasisv1.AnnotationRestoreFrom))
	}
	// Every container of the RuntimeClass asks: the runtime may not pass
	// the pod's annotations on (CRI-O), and the pod, not the spec, says.
	// The shim or conmon kills a create that takes too long: stop then,
	// leaving no work directory behind.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	asked := time.Now()
	ans, err := w.resolveGrant(ctx, pod)
	if err != nil {
		return w.fail(inv, fmt.Errorf("stasis: restore container %s: %w", pod.Container, err))
	}
	if !ans.Restore {
		return passThrough() // no grant, or one for the pod's other containers
	}
	if err := w.restore(ctx, inv, c, bundle, spec, ans, time.Since(asked)); err != nil {
		return w.fail(inv, fmt.Errorf("stasis: restore container %s of pod %s/%s from %s: %w", pod.Container, pod.Namespace, pod.Name, ans.Image, err))
	}
	return 0
}

// containerName is the container's name in its pod, as the CRI runtime
// records it.
func containerName(spec *ociSpec) string {
	if spec.Annotations["io.kubernetes.cri.container-type"] == "sandbox" ||
		spec.Annotations["io.kubernetes.cri-o.ContainerType"] == "sandbox" {
		return "" // the pod's pause container is never restored
	}
	for _, k := range containerNameAnnotations {
		if name := spec.Annotations[k]; name != "" {
			return name
		}
	}
	// CRI-O: the CRI metadata, as JSON.
	var md struct {
		Name string `json:"name"`
	}
	if json.Unmarshal([]byte(spec.Annotations["io.kubernetes.cri-o.Metadata"]), &md) == nil {
		return md.Name
	}
	return ""
}

// restore restores the checkpoint the grant gave (asking took granted)
// into the bundle (engine.RestoreBundle), then gives the restored process
// the new pod's hostname and records what it did.
func (w *wrapper) restore(ctx context.Context, inv invocation, c createFlags, bundle string, spec *ociSpec, ans *wire.GrantAnswer,
	granted time.Duration) error {
	eng, err := w.engine()
	if err != nil {
		return err
	}
	opts := registry.Options{TLSVerify: w.cfg.TLSVerify == nil || *w.cfg.TLSVerify}
	if p := ans.Peer; p != nil {
		// Another node's store, read where it lies.
		opts.Pinned = &registry.Pinned{CA: p.CA, Subject: p.Subject, Organization: p.Organization, Token: p.Token}
	}
	// The agent read the grant's lazyPages and the pod's annotation.
	lazy := ans.LazyPages || w.cfg.LazyPages
	// The grant says whose checkpoint this must be; the signature, checked
	// before anything is unpacked, says whose it is.
	res, err := eng.RestoreBundle(ctx, ans.Image, engine.Bundle{
		Runtime: &runc.Runtime{Binary: w.runc, Globals: inv.globals},
		ID:      c.id, Dir: bundle, Rootfs: spec.rootPath(bundle),
		PidFile: c.pidFile, ConsoleSocket: c.consoleSocket, NoPivot: c.noPivot,
	}, engine.BundleOptions{Registry: opts, LazyPages: lazy,
		Expect: provenance.Expect{Namespace: ans.Namespace, Container: ans.Container, Archive: ans.Archive}})
	if err != nil {
		return err
	}
	rec := Record{Checkpoint: ans.Image, LazyPages: lazy, Phases: map[string]int64{"grant_us": granted.Microseconds()}}
	for k, v := range res.Phases {
		rec.Phases[k+"_us"] = v
	}
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(bundle, RecordFile), b, 0o600); err != nil {
		return err
	}
	if c.pidFile != "" {
		if err := setHostname(c.pidFile, spec.hostname(bundle)); err != nil {
			return fmt.Errorf("set the new pod's hostname: %w", err)
		}
	}
	return nil
}

func (w *wrapper) engine() (*engine.Engine, error) {
	ids, err := archive.ReadIdentities(w.cfg.Identities)
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	for _, f := range w.cfg.DecryptionKeys {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		keys = append(keys, b)
	}
	trusted, err := filepath.Glob(filepath.Join(w.cfg.TrustedKeyDir, "*.pub"))
	if err != nil {
		return nil, err
	}
	trusted = append(append([]string{}, w.cfg.TrustedKeys...), trusted...)
	if w.cfg.ClusterKey == "" && len(trusted) == 0 {
		return nil, errors.New("no key to verify checkpoints with: set clusterKey (the cluster's checkpoint key, public half) in the runtime config")
	}
	trust, err := provenance.LoadTrust(w.cfg.ClusterKey, trusted)
	if err != nil {
		return nil, err
	}
	return engine.New(engine.Options{Root: w.cfg.Root, RunRoot: w.cfg.RunRoot, Runtime: w.runc, Identities: ids, DecryptionKeys: keys,
		MaxUnpack: w.cfg.MaxUnpack, Trust: trust})
}

// runcState is `runc state`'s answer, decoded, and kept whole to be
// printed again.
type runcState struct {
	runc.State
	fields map[string]json.RawMessage
}

// restored reports the container's state when the wrapper restored it and
// no `start` has come yet.
func (w *wrapper) restored(inv invocation) (*runcState, bool) {
	if len(inv.args) == 0 {
		return nil, false
	}
	id := inv.args[len(inv.args)-1]
	out, err := exec.Command(w.runc, append(append([]string{}, inv.globals...), "state", id)...).Output()
	if err != nil {
		return nil, false
	}
	st := &runcState{}
	if json.Unmarshal(out, &st.fields) != nil || json.Unmarshal(out, &st.State) != nil {
		return nil, false
	}
	if st.Bundle == "" || st.Status != runc.Running {
		return nil, false
	}
	if _, err := os.Stat(filepath.Join(st.Bundle, RecordFile)); err != nil {
		return nil, false
	}
	if _, err := os.Stat(filepath.Join(st.Bundle, startedMarker)); err == nil {
		return nil, false
	}
	return st, true
}

// state prints the state of a restored, not yet started container as
// runc prints a created one's.
func (w *wrapper) state(st *runcState) int {
	st.fields["status"], _ = json.Marshal(runc.Created)
	b, err := json.MarshalIndent(st.fields, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(string(b))
	return 0
}

// fail reports err where the caller looks: stderr, and runc's --log file,
// whose last error line containerd's shim and conmon put in their message.
func (w *wrapper) fail(inv invocation, err error) int {
	fmt.Fprintln(os.Stderr, err)
	if log := inv.global("log"); log != "" {
		if f, ferr := os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); ferr == nil {
			line := map[string]string{"level": "error", "msg": err.Error(), "time": time.Now().Format(time.RFC3339Nano)}
			if inv.global("log-format") == "json" {
				json.NewEncoder(f).Encode(line)
			} else {
				io.WriteString(f, err.Error()+"\n")
			}
			f.Close()
		}
	}
	return 1
}

// setHostname gives the restored process' UTS namespace the new pod's
// hostname: CRIU brought back the checkpointed pod's.
func setHostname(pidFile, hostname string) error {
	if hostname == "" {
		return nil
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return err
	}
	pid := strings.TrimSpace(string(b))
	target, err := os.Readlink("/proc/" + pid + "/ns/uts")
	if err != nil {
		return err
	}
	if self, _ := os.Readlink("/proc/self/ns/uts"); self == target {
		return nil // the host's namespace (hostNetwork): not ours to rename
	}
	fd, err := unix.Open("/proc/"+pid+"/ns/uts", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	done := make(chan error, 1)
	go func() {
		// The thread that joins another namespace never runs anything
		// else: it stays locked and dies with this goroutine.
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWUTS); err != nil {
			done <- err
			return
		}
		done <- unix.Sethostname([]byte(hostname))
	}()
	return <-done
}
