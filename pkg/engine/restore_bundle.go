package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// Bundle is a container that a CRI runtime's shim or conmon prepared and
// asked stasis-runc to `create`: the restore goes into its bundle, with its
// rootfs, cgroup and namespaces; only the CRIU images and the rootfs
// changes come from the checkpoint.
type Bundle struct {
	// Runtime is the runc the shim meant to call, with the global flags it
	// gave (runc.Runtime.Globals).
	Runtime *runc.Runtime
	ID, Dir string
	// Rootfs is the bundle's root filesystem, as its config.json says.
	Rootfs string
	// PidFile, ConsoleSocket and NoPivot are what `create` was told.
	PidFile, ConsoleSocket string
	NoPivot                bool
}

// BundleOptions say how RestoreBundle finds the checkpoint and restores it.
type BundleOptions struct {
	// Registry is how to pull a checkpoint image.
	Registry registry.Options
	// Expect is what the checkpoint image's signature must say of it when
	// the engine verifies signatures (Options.Trust): the namespace the
	// pod is restored into, and its container.
	Expect    provenance.Expect
	LazyPages bool
}

// Files RestoreBundle leaves in the bundle, for as long as the container.
const (
	// BundleCRIUConfig is the CRIU config file runc passes on.
	BundleCRIUConfig = "stasis-criu.conf"
	// BundleRestoreLog is CRIU's log of the restore.
	BundleRestoreLog = "stasis-restore.log"
)

// RestoreBundle restores checkpoint image ref, signed as o.Expect says
// (the engine must have trust), into b and returns once the restored
// process runs. The work directory it unpacks into is under the
// engine's root, on disk: a checkpoint may be larger than the tmpfs a
// bundle lives on. A pulled image stays in the store, even when the
// restore fails: the next replica, or the kubelet's retry of this one,
// does not pull again (and what is pulled is verified before it is
// stored).
func (e *Engine) RestoreBundle(ctx context.Context, ref string, b Bundle, o BundleOptions) (*RestoreResult, error) {
	start := time.Now()
	src, err := e.resolve(ctx, Ref{Name: ref, Registry: o.Registry, Expect: &o.Expect, Signed: true, Lazy: o.LazyPages})
	if err != nil {
		return nil, err
	}
	resolved := time.Since(start)
	res, err := e.restore(ctx, src, &bundleTarget{b: b}, runc.RestoreOptions{LazyPages: o.LazyPages})
	if err != nil {
		return nil, err
	}
	res.Container, res.ID = b.ID, b.ID
	res.Phases.Add("resolve", resolved)
	res.Phases["total"] = time.Since(start).Microseconds()
	return res, nil
}

// bundleTarget restores into a Bundle.
type bundleTarget struct{ b Bundle }

// A pod's checkpoint is restored with its file changes, always.
func (t *bundleTarget) ignoresRootfs() bool { return false }

func (t *bundleTarget) prepare(context.Context, *Engine, *unpacked) (string, error) {
	return t.b.Rootfs, nil
}

// configure gives runc a CRIU config file. skip-file-rwx-check: the new
// rootfs' directories need not have the modes of the checkpointed one.
// tcp-close: the pod has a new IP, so established connections cannot go
// on; listening sockets do.
func (t *bundleTarget) configure(ctx context.Context, e *Engine, ck *unpacked) error {
	conf := filepath.Join(t.b.Dir, BundleCRIUConfig)
	if err := os.WriteFile(conf, []byte("skip-file-rwx-check\ntcp-close\n"), 0o600); err != nil {
		return err
	}
	dumped, err := ck.Spec()
	if err != nil {
		return err
	}
	return editBundleSpec(t.b.Dir, func(spec map[string]json.RawMessage) error {
		if err := addRuntimeMounts(t.b.Dir, spec, dumped.Mounts); err != nil {
			return err
		}
		return setAnnotation(spec, "org.criu.config", conf)
	})
}

// runtimeFiles are files a CRI runtime bind-mounts into every container of
// its own, empty or nearly: CRI-O's (and Podman's) /run/.containerenv.
// A checkpoint taken under CRI-O has that mount, which CRIU restores only
// where the new container's spec has it too; containerd's has not.
var runtimeFiles = map[string]bool{"/run/.containerenv": true}

// addRuntimeMounts adds to the bundle's spec each runtimeFiles bind mount
// the checkpoint has and the spec lacks, from an empty file in the bundle.
func addRuntimeMounts(bundle string, spec map[string]json.RawMessage, dumped []specs.Mount) error {
	var mounts []specs.Mount
	if raw, ok := spec["mounts"]; ok {
		if err := json.Unmarshal(raw, &mounts); err != nil {
			return err
		}
	}
	have := map[string]bool{}
	for _, m := range mounts {
		have[m.Destination] = true
	}
	added := false
	for _, m := range dumped {
		if !runtimeFiles[m.Destination] || have[m.Destination] {
			continue
		}
		src := filepath.Join(bundle, "stasis-"+strings.TrimPrefix(filepath.Base(m.Destination), "."))
		if err := os.WriteFile(src, nil, 0o644); err != nil {
			return err
		}
		mounts = append(mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
		added = true
	}
	if !added {
		return nil
	}
	b, err := json.Marshal(mounts)
	spec["mounts"] = b
	return err
}

func (t *bundleTarget) start(ctx context.Context, e *Engine, ck *unpacked, o runc.RestoreOptions, _ *criu.LazyPagesServer) (int, error) {
	o.Bundle, o.PidFile, o.ConsoleSocket, o.NoPivot = t.b.Dir, t.b.PidFile, t.b.ConsoleSocket, t.b.NoPivot
	argv := t.b.Runtime.RestoreArgs(t.b.ID, o)
	cmd := exec.Command(argv[0], argv[1:]...)
	// The shim or conmon gave stasis-runc the container's stdio.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	runErr := cmd.Run()
	// The log is kept beside the bundle (a lazy restore's page server may
	// have removed it already: it is done when every page is in, which can
	// be before this line).
	log, _ := ck.ReadMember(archive.RestoreLog, 16<<20)
	os.WriteFile(filepath.Join(t.b.Dir, BundleRestoreLog), log, 0o600)
	if runErr != nil {
		msg := fmt.Sprintf("runc restore: %v", runErr)
		for _, l := range criu.ErrorLines(log, 3) {
			msg += "; " + l
		}
		return 0, errors.New(msg)
	}
	if t.b.PidFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(t.b.PidFile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// abort has nothing to undo: the bundle is the shim's, which deletes what
// a failed create left.
func (t *bundleTarget) abort(context.Context, *Engine) error { return nil }
func (t *bundleTarget) close()                               {}

// editBundleSpec rewrites the bundle's config.json with edit, keeping
// everything else as it was: the file is rewritten as generic JSON, so
// fields newer than stasis' runtime-spec survive.
func editBundleSpec(bundle string, edit func(map[string]json.RawMessage) error) error {
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	if err := edit(spec); err != nil {
		return err
	}
	if b, err = json.Marshal(spec); err != nil {
		return err
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	tmp := p + ".stasis"
	if err := os.WriteFile(tmp, b, st.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// setAnnotation sets an annotation of a spec read as generic JSON.
func setAnnotation(spec map[string]json.RawMessage, key, value string) error {
	ann := map[string]string{}
	if raw, ok := spec["annotations"]; ok {
		if err := json.Unmarshal(raw, &ann); err != nil {
			return err
		}
	}
	ann[key] = value
	var err error
	spec["annotations"], err = json.Marshal(ann)
	return err
}
