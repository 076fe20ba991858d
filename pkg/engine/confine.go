package engine

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// A checkpoint made elsewhere (an imported file, an upload, a checkpoint
// image) carries a spec.dump its author wrote, and a restore runs as root:
// honouring it would let the author bind-mount any host path, join the
// host's namespaces, add capabilities and devices, or drop seccomp (the
// attack of CRI-O's CVE-2024-8676). So its spec is rebuilt from stasis'
// own defaults and spec.dump is read only for what CRIU needs to match.

// ErrNotAllowed marks a checkpoint that asks for what its source may not
// choose (a host path, a host namespace) unless the restore allows it.
var ErrNotAllowed = errors.New("not allowed for a checkpoint made elsewhere")

// providedMounts are the bind mounts whose sources stasis itself provides
// on every restore (adaptSpec): never a path the archive names.
var providedMounts = map[string]bool{
	"/etc/hosts": true, "/etc/hostname": true, "/etc/resolv.conf": true,
	"/run/.containerenv": true, "/dev/shm": true,
}

// kernelMounts are the filesystem types a restored container may mount
// itself: they name no host path.
var kernelMounts = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "mqueue": true, "cgroup": true, "cgroup2": true,
}

// confineSpec builds the spec a checkpoint from elsewhere is restored with:
// runtime's defaults for a container, with the process (arguments, cwd,
// env, user, rlimits clamped to this host's) and the list of mount
// destinations taken from the dumped spec. Bind mounts other than those
// stasis provides need a volume for their destination; host namespaces,
// capabilities, devices, masked paths, seccomp and security labels are
// taken from the dump only when privileged.
func confineSpec(dumped *specs.Spec, volumes []runc.Mount, privileged bool) (*specs.Spec, error) {
	network := runc.NetworkNone
	if !hasNamespace(dumped, specs.NetworkNamespace) {
		network = runc.NetworkHost
	}
	for _, t := range []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.PIDNamespace, specs.IPCNamespace, specs.MountNamespace} {
		if !hasNamespace(dumped, t) && !privileged {
			return nil, fmt.Errorf("%w: the checkpoint shares the host's %s namespace: restore it with --privileged to allow that", ErrNotAllowed, t)
		}
	}
	s := runc.DefaultSpec(runc.SpecOptions{Hostname: dumped.Hostname, Network: network})
	p := dumped.Process
	s.Process.Args, s.Process.Env, s.Process.Cwd, s.Process.Terminal = p.Args, p.Env, p.Cwd, p.Terminal
	s.Process.User = specs.User{UID: p.User.UID, GID: p.User.GID, AdditionalGids: p.User.AdditionalGids, Umask: p.User.Umask}
	s.Process.Rlimits = clampRlimits(p.Rlimits)
	s.Root.Readonly = dumped.Root != nil && dumped.Root.Readonly
	if dumped.Linux != nil {
		for _, ns := range dumped.Linux.Namespaces {
			// A user or cgroup namespace only confines; its mappings map
			// the container's ids, not the host's.
			if ns.Type == specs.UserNamespace || ns.Type == specs.CgroupNamespace {
				s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: ns.Type})
			}
		}
		s.Linux.UIDMappings, s.Linux.GIDMappings = dumped.Linux.UIDMappings, dumped.Linux.GIDMappings
	}
	if privileged {
		s.Process.Capabilities, s.Process.NoNewPrivileges = p.Capabilities, p.NoNewPrivileges
		s.Process.ApparmorProfile, s.Process.SelinuxLabel = p.ApparmorProfile, p.SelinuxLabel
		if dumped.Linux != nil {
			var ns []specs.LinuxNamespace
			for _, n := range dumped.Linux.Namespaces {
				ns = append(ns, specs.LinuxNamespace{Type: n.Type}) // paths: never another process' namespace
			}
			s.Linux.Namespaces = ns
			s.Linux.Devices, s.Linux.Seccomp, s.Linux.Sysctl = dumped.Linux.Devices, dumped.Linux.Seccomp, dumped.Linux.Sysctl
			s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = dumped.Linux.MaskedPaths, dumped.Linux.ReadonlyPaths
			s.Linux.MountLabel = dumped.Linux.MountLabel
		}
	}
	mounts, err := confineMounts(s.Mounts, dumped.Mounts, volumes)
	if err != nil {
		return nil, err
	}
	s.Mounts = mounts
	// Only stasis' own annotations come back (the opt-outs); others may
	// configure runc or CRIU (org.criu.config).
	for k, v := range dumped.Annotations {
		if strings.HasPrefix(k, "stasis.dev/") || k == "io.container.manager" {
			s.Annotations[k] = v
		}
	}
	return s, nil
}

// confineMounts keeps the dumped spec's mount destinations: stasis' own
// defaults where it has one, kernel filesystems as dumped, bind mounts
// only from volumes (or the files stasis provides).
func confineMounts(defaults, dumped []specs.Mount, volumes []runc.Mount) ([]specs.Mount, error) {
	byDest := map[string]runc.Mount{}
	for _, v := range volumes {
		byDest[path.Clean(v.Destination)] = v
	}
	used := map[string]bool{}
	var out []specs.Mount
	var unmapped []string
	have := map[string]specs.Mount{}
	for _, m := range defaults {
		have[m.Destination] = m
	}
	for _, m := range dumped {
		dst := path.Clean(m.Destination)
		if !path.IsAbs(dst) {
			return nil, fmt.Errorf("%w: spec.dump: mount destination %q is not absolute", archive.ErrInvalid, m.Destination)
		}
		bind := m.Type == "bind" || contains(m.Options, "bind") || contains(m.Options, "rbind")
		switch {
		case byDest[dst] != (runc.Mount{}):
			v := byDest[dst]
			used[dst] = true
			opts := []string{"rbind", "rprivate"}
			if v.ReadOnly || contains(m.Options, "ro") {
				opts = append(opts, "ro")
			}
			out = append(out, specs.Mount{Destination: dst, Type: "bind", Source: v.Source, Options: opts})
		case bind && providedMounts[dst]:
			// adaptSpec puts stasis' own file or directory here.
			out = append(out, specs.Mount{Destination: dst, Type: "bind", Source: "/dev/null", Options: []string{"bind", "rprivate"}})
		case have[dst].Destination != "" && (!bind || dst == "/sys"):
			out = append(out, have[dst])
		case bind:
			unmapped = append(unmapped, dst)
		case kernelMounts[m.Type]:
			out = append(out, specs.Mount{Destination: dst, Type: m.Type, Source: m.Type, Options: m.Options})
		default:
			return nil, fmt.Errorf("%w: spec.dump: a %q mount at %s names a host filesystem", ErrNotAllowed, m.Type, dst)
		}
	}
	if len(unmapped) > 0 {
		return nil, fmt.Errorf("%w: the checkpoint bind-mounts host paths at %s: map each with --volume SRC:DST (the agent: volume=SRC:DST, or \"volumes\")",
			ErrNotAllowed, strings.Join(unmapped, ", "))
	}
	var extra []string
	for dst := range byDest {
		if !used[dst] {
			extra = append(extra, dst)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Errorf("%w: --volume: the checkpoint has no mount at %s (CRIU restores the mounts it dumped)", ErrNotAllowed, strings.Join(extra, ", "))
	}
	return out, nil
}

// applyVolumes points bind mounts of a checkpoint of this node at the
// volumes given for their destinations.
func applyVolumes(s *specs.Spec, volumes []runc.Mount) error {
	for _, v := range volumes {
		found := false
		for i, m := range s.Mounts {
			if path.Clean(m.Destination) == path.Clean(v.Destination) {
				s.Mounts[i].Source, s.Mounts[i].Type, found = v.Source, "bind", true
			}
		}
		if !found {
			return fmt.Errorf("%w: --volume: the checkpoint has no mount at %s (CRIU restores the mounts it dumped)", ErrNotAllowed, v.Destination)
		}
	}
	return nil
}

func hasNamespace(s *specs.Spec, t specs.LinuxNamespaceType) bool {
	if s.Linux == nil {
		return false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == t {
			return true
		}
	}
	return false
}

var rlimits = map[string]int{
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_CPU": unix.RLIMIT_CPU,
	"RLIMIT_DATA": unix.RLIMIT_DATA, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS,
	"RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK, "RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE,
	"RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO, "RLIMIT_RTTIME": unix.RLIMIT_RTTIME, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_STACK": unix.RLIMIT_STACK,
}

// clampRlimits keeps the dumped limits no higher than this process' own:
// raising one needs CAP_SYS_RESOURCE, which is not the archive's to grant.
func clampRlimits(in []specs.POSIXRlimit) []specs.POSIXRlimit {
	var out []specs.POSIXRlimit
	for _, l := range in {
		res, ok := rlimits[l.Type]
		if !ok {
			continue
		}
		var host unix.Rlimit
		if unix.Getrlimit(res, &host) != nil {
			continue
		}
		l.Hard = min(l.Hard, host.Max)
		l.Soft = min(l.Soft, l.Hard)
		out = append(out, l)
	}
	return out
}
