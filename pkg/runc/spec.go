package runc

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Network modes a container can have.
const (
	NetworkNone = "none" // its own network namespace with only loopback
	NetworkHost = "host" // the host's network namespace
)

// Mount is a bind mount from the host into the container.
type Mount struct {
	Source, Destination string
	ReadOnly            bool
}

// ParseMount reads a volume as the CLI takes it: /host/path:/container/path[:ro|rw].
func ParseMount(v string) (Mount, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || !strings.HasPrefix(parts[1], "/") {
		return Mount{}, fmt.Errorf("invalid volume %q: want /host/path:/container/path[:ro]", v)
	}
	m := Mount{Source: parts[0], Destination: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return m, fmt.Errorf("invalid volume option %q: want ro or rw", parts[2])
		}
	}
	return m, nil
}

// SpecOptions is what a spec is generated from.
type SpecOptions struct {
	ID, Hostname string
	Rootfs       string // the mounted overlay
	Args, Env    []string
	Cwd, User    string // User as in an image config: "name", "uid", "uid:gid"
	Network      string
	// NetNSPath, with network none, is the namespace to join (see
	// pkg/netns); empty lets the runtime make one.
	NetNSPath string
	Mounts    []Mount
	// EtcFiles maps /etc/hosts, /etc/hostname and /etc/resolv.conf to files
	// stasis writes for the container, bind-mounted as Podman does, so an
	// archive restores in either tool with the same set of mounts.
	EtcFiles    map[string]string
	Annotations map[string]string
}

// SpecVersion is the OCI runtime-spec version stasis writes: the version
// the runtimes it drives were built for (crun 1.8 refuses newer ones), not
// that of the Go module, which only adds fields stasis does not use.
const SpecVersion = "1.0.2"

// CgroupsPath is where a container's cgroups live under each hierarchy.
func CgroupsPath(id string) string { return "/stasis/" + id }

// defaultCaps is the capability set Podman and Docker give containers.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE",
	"CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// Spec generates the OCI runtime spec for a new container.
func Spec(o SpecOptions) (*specs.Spec, error) {
	if o.Network != NetworkNone && o.Network != NetworkHost && o.Network != "" {
		return nil, fmt.Errorf("network %q is not supported (want none or host)", o.Network)
	}
	uid, gid, groups, err := resolveUser(o.Rootfs, o.User)
	if err != nil {
		return nil, err
	}
	s := DefaultSpec(o)
	s.Process.User = specs.User{UID: uid, GID: gid, AdditionalGids: groups}
	return s, nil
}

// DefaultSpec is the spec of a container as stasis makes one, with the
// user as root (o.User is not resolved): what Spec builds on, and what a
// checkpoint from elsewhere is restored into.
func DefaultSpec(o SpecOptions) *specs.Spec {
	cwd := o.Cwd
	if cwd == "" {
		cwd = "/"
	}
	env := o.Env
	if !hasEnv(env, "PATH") {
		env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	}
	if !hasEnv(env, "HOSTNAME") {
		env = append(env, "HOSTNAME="+o.Hostname)
	}
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}
	if o.Network != NetworkHost {
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: o.NetNSPath})
	}
	annotations := map[string]string{}
	for k, v := range o.Annotations {
		annotations[k] = v
	}
	s := &specs.Spec{
		Version:  SpecVersion,
		Hostname: o.Hostname,
		Root:     &specs.Root{Path: o.Rootfs},
		Process: &specs.Process{
			Args: o.Args, Env: env, Cwd: cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps,
			},
			// Above 20000 runc needs CAP_SYS_RESOURCE, which hosts like
			// unprivileged CI sandboxes lack.
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces:  ns,
			CgroupsPath: CgroupsPath(o.ID),
			MaskedPaths: []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/dev/block"},
			ReadonlyPaths: []string{"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
		Annotations: annotations,
	}
	if o.Network == NetworkHost {
		// sysfs cannot be mounted without a network namespace of our own.
		s.Mounts[len(s.Mounts)-1] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
	}
	for _, dst := range []string{"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"} {
		if src, ok := o.EtcFiles[dst]; ok {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: dst, Type: "bind", Source: src, Options: []string{"bind", "rprivate"}})
		}
	}
	for _, m := range o.Mounts {
		opts := []string{"rbind", "rprivate"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
	}
	return s
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

// resolveUser looks a user up in the image's own passwd and group files, the
// way the container would see them.
func resolveUser(rootfs, spec string) (uint32, uint32, []uint32, error) {
	if spec == "" {
		spec = "0"
	}
	defaults := &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}
	eu, err := user.GetExecUserPath(spec, defaults,
		filepath.Join(rootfs, "etc/passwd"), filepath.Join(rootfs, "etc/group"))
	if err != nil {
		return 0, 0, nil, fmt.Errorf("resolve user %q: %w", spec, err)
	}
	var groups []uint32
	for _, g := range eu.Sgids {
		groups = append(groups, uint32(g))
	}
	return uint32(eu.Uid), uint32(eu.Gid), groups, nil
}
