package engine

import (
	"errors"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// hostile is a spec.dump asking for everything a restore as root could
// give: host paths, host namespaces, capabilities, devices, hooks, a CRIU
// config of its own.
func hostile() *specs.Spec {
	return &specs.Spec{
		Root:     &specs.Root{Path: "/evil"},
		Hostname: "web",
		Process: &specs.Process{
			Args: []string{"/app"}, Env: []string{"A=1"}, Cwd: "/srv",
			User:         specs.User{UID: 1000, GID: 1000},
			Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_SYS_ADMIN"}, Effective: []string{"CAP_SYS_ADMIN"}},
			Rlimits:      []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1 << 40, Soft: 1 << 40}, {Type: "RLIMIT_BOGUS", Hard: 1}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/etc/hosts", Type: "bind", Source: "/etc/shadow", Options: []string{"bind"}},
			{Destination: "/data", Type: "bind", Source: "/root", Options: []string{"rbind", "ro"}},
			{Destination: "/scratch", Type: "tmpfs", Source: "/dev/sda", Options: []string{"size=1m"}},
		},
		Hooks: &specs.Hooks{Prestart: []specs.Hook{{Path: "/bin/sh"}}},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"},
				{Type: specs.IPCNamespace}, {Type: specs.MountNamespace}, {Type: specs.UTSNamespace}},
			Devices:     []specs.LinuxDevice{{Path: "/dev/sda", Type: "b", Major: 8}},
			MaskedPaths: []string{},
		},
		Annotations: map[string]string{"org.criu.config": "/etc/evil.conf", "stasis.dev/checkpoint": "never"},
	}
}

func TestConfineSpecTakesOnlyWhatCRIUNeeds(t *testing.T) {
	_, err := confineSpec(hostile(), nil, false)
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "/data") || !strings.Contains(err.Error(), "--volume") {
		t.Fatalf("unmapped bind mount: %v", err)
	}
	s, err := confineSpec(hostile(), []runc.Mount{{Source: "/srv/data", Destination: "/data"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if s.Process.Args[0] != "/app" || s.Process.Cwd != "/srv" || s.Process.User.UID != 1000 || s.Hostname != "web" {
		t.Errorf("process not taken: %+v", s.Process)
	}
	if caps := s.Process.Capabilities.Bounding; strings.Contains(strings.Join(caps, " "), "CAP_SYS_ADMIN") {
		t.Errorf("capabilities taken from the archive: %v", caps)
	}
	if len(s.Linux.Devices) != 0 || s.Hooks != nil || len(s.Linux.MaskedPaths) == 0 {
		t.Errorf("devices %v, hooks %v or masked paths %v taken from the archive", s.Linux.Devices, s.Hooks, s.Linux.MaskedPaths)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace path taken: %+v", ns)
		}
	}
	if s.Annotations["org.criu.config"] != "" || s.Annotations["stasis.dev/checkpoint"] != "never" {
		t.Errorf("annotations: %v", s.Annotations)
	}
	if len(s.Process.Rlimits) != 1 || s.Process.Rlimits[0].Hard == 1<<40 {
		t.Errorf("rlimits not clamped: %+v", s.Process.Rlimits)
	}
	got := map[string]specs.Mount{}
	for _, m := range s.Mounts {
		got[m.Destination] = m
	}
	if m := got["/data"]; m.Source != "/srv/data" || !contains(m.Options, "ro") {
		t.Errorf("/data: %+v", m)
	}
	if m := got["/etc/hosts"]; m.Source == "/etc/shadow" {
		t.Errorf("/etc/hosts from the archive: %+v", m)
	}
	if m := got["/scratch"]; m.Type != "tmpfs" || m.Source != "tmpfs" {
		t.Errorf("/scratch: %+v", m)
	}

	if _, err := confineSpec(hostile(), []runc.Mount{{Source: "/a", Destination: "/data"}, {Source: "/b", Destination: "/nope"}}, false); err == nil || !strings.Contains(err.Error(), "/nope") {
		t.Errorf("a volume for no mount: %v", err)
	}
}

func TestConfineSpecHostNamespacesNeedPrivileged(t *testing.T) {
	h := hostile()
	h.Mounts = h.Mounts[:2]
	h.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.MountNamespace}}
	if _, err := confineSpec(h, nil, false); !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "network") {
		t.Fatalf("host network without --privileged: %v", err)
	}
	s, err := confineSpec(h, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if hasNamespace(s, specs.NetworkNamespace) || !strings.Contains(strings.Join(s.Process.Capabilities.Bounding, " "), "CAP_SYS_ADMIN") {
		t.Errorf("--privileged: namespaces %v, capabilities %v", s.Linux.Namespaces, s.Process.Capabilities)
	}
}

func TestConfineSpecPrivilegedDropsNamespacePaths(t *testing.T) {
	h := hostile()
	h.Mounts = h.Mounts[:2]
	h.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"},
		{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"}, {Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"},
		{Type: specs.MountNamespace, Path: "/proc/1/ns/mnt"}, {Type: specs.UserNamespace, Path: "/proc/1/ns/user"}}
	for _, privileged := range []bool{false, true} {
		s, err := confineSpec(h, nil, privileged)
		if err != nil {
			t.Fatalf("privileged=%v: %v", privileged, err)
		}
		types := map[specs.LinuxNamespaceType]bool{}
		for _, ns := range s.Linux.Namespaces {
			types[ns.Type] = true
			if ns.Path != "" {
				t.Errorf("privileged=%v: namespace path taken from the archive: %+v", privileged, ns)
			}
		}
		if !types[specs.IPCNamespace] || !types[specs.UserNamespace] {
			t.Errorf("privileged=%v: namespaces %+v, want the ipc and user namespaces kept (with no path)", privileged, s.Linux.Namespaces)
		}
	}
}

func TestConfineSpecRefusesMounts(t *testing.T) {
	for _, tc := range []struct {
		what  string
		mount specs.Mount
		want  error
	}{
		{"relative destination", specs.Mount{Destination: "data", Type: "tmpfs", Source: "tmpfs"}, archive.ErrInvalid},
		{"relative bind destination", specs.Mount{Destination: "../data", Type: "bind", Source: "/root", Options: []string{"rbind"}}, archive.ErrInvalid},
		{"host filesystem", specs.Mount{Type: "ext4", Source: "/dev/sda1", Destination: "/x"}, ErrNotAllowed},
		{"host filesystem over a default: the default", specs.Mount{Type: "ext4", Source: "/dev/sda1", Destination: "/x/../proc/"}, nil},
		{"overlay of host paths", specs.Mount{Type: "overlay", Source: "overlay", Destination: "/x", Options: []string{"lowerdir=/etc"}}, ErrNotAllowed},
	} {
		for _, privileged := range []bool{false, true} {
			h := hostile()
			h.Mounts = append(h.Mounts[:2], tc.mount)
			s, err := confineSpec(h, nil, privileged)
			if tc.want == nil {
				// A destination stasis has a default for gets the default.
				if err != nil {
					t.Errorf("%s (privileged=%v): %v", tc.what, privileged, err)
					continue
				}
				for _, m := range s.Mounts {
					if m.Type == "ext4" || m.Source == "/dev/sda1" {
						t.Errorf("%s (privileged=%v): mount taken from the archive: %+v", tc.what, privileged, m)
					}
				}
				continue
			}
			if !errors.Is(err, tc.want) || s != nil {
				t.Errorf("%s (privileged=%v): spec %v, error %v; want %v", tc.what, privileged, s != nil, err, tc.want)
			}
		}
	}
}

// A dumped bind mount of /sys (runc's for a container without a network
// namespace of its own) is not a host path to map: it becomes stasis' own
// /sys, whatever source and options the archive gave it.
func TestConfineSpecSysBindIsStasisOwn(t *testing.T) {
	evil := specs.Mount{Destination: "/sys/", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}}
	for _, tc := range []struct {
		what       string
		hostNet    bool
		wantType   string
		wantSource string
	}{
		{"own network namespace", false, "sysfs", "sysfs"},
		{"host network", true, "bind", "/sys"},
	} {
		h := hostile()
		h.Mounts = append(h.Mounts[:2], evil)
		if tc.hostNet {
			h.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.MountNamespace}}
		}
		s, err := confineSpec(h, nil, tc.hostNet)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		var sys []specs.Mount
		for _, m := range s.Mounts {
			if m.Destination == "/sys" {
				sys = append(sys, m)
			}
		}
		if len(sys) != 1 {
			t.Fatalf("%s: /sys mounts %+v, want one", tc.what, sys)
		}
		if m := sys[0]; m.Type != tc.wantType || m.Source != tc.wantSource || !contains(m.Options, "ro") || contains(m.Options, "rw") {
			t.Errorf("%s: /sys %+v, want stasis' own read-only %s from %s", tc.what, m, tc.wantType, tc.wantSource)
		}
	}
	// Any other bind of a destination stasis has a default for still
	// needs a volume.
	h := hostile()
	h.Mounts = append(h.Mounts[:2], specs.Mount{Destination: "/proc", Type: "bind", Source: "/proc", Options: []string{"rbind"}})
	if _, err := confineSpec(h, nil, false); !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "/proc") {
		t.Errorf("a bind over /proc: %v", err)
	}
}
