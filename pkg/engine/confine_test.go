package engine

import (
	"errors"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/stasis-dev/stasis/pkg/runtime"
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
	s, err := confineSpec(hostile(), []runtime.Mount{{Source: "/srv/data", Destination: "/data"}}, false)
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

	if _, err := confineSpec(hostile(), []runtime.Mount{{Source: "/a", Destination: "/data"}, {Source: "/b", Destination: "/nope"}}, false); err == nil || !strings.Contains(err.Error(), "/nope") {
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
