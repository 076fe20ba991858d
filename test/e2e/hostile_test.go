package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/internal/treesnap"
)

// Hostile checkpoint archives: members that are links, FIFOs or devices,
// unsafe xattrs, host bind mounts, archives too large to unpack, a restore
// interrupted by SIGTERM. Each is refused promptly, names the member and
// the reason, leaves nothing behind and touches nothing outside; the
// source container keeps running.

const hostileTimeout = 30 * time.Second

// hostile is a source container "src" (the busybox counter), its archive
// exported with --compress none, and a sentinel directory on the host that
// holds copies of the real members, so that an archive whose members lead
// out to them would restore if they were followed.
type hostile struct {
	e        *env
	plain    string // src's archive
	dir      string // where hostile archives are built (a neutral path)
	sentinel string
	before   treesnap.Snapshot // the sentinel's
	mounts   int               // mounts under the root with src running
	members  []member
}

func newHostile(t *testing.T) *hostile {
	t.Helper()
	requireRoot(t)
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("src", 10)
	h := &hostile{e: e, dir: t.TempDir(), sentinel: t.TempDir()}
	h.plain = filepath.Join(h.dir, "src.tar")
	e.run("checkpoint", "src", "--export", h.plain, "--compress", "none", "--leave-running")
	h.members = readMembers(t, h.plain)
	write := func(p string, b []byte) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(h.sentinel, "marker"), []byte("host file, keep me\n"))
	for _, m := range h.members {
		switch {
		case m.hdr.Name == "spec.dump":
			write(filepath.Join(h.sentinel, "spec.json"), m.data)
		case m.hdr.Name == "rootfs-diff.tar":
			write(filepath.Join(h.sentinel, "diff.tar"), m.data)
		case strings.HasPrefix(m.hdr.Name, "checkpoint/") && m.hdr.Typeflag == tar.TypeReg:
			write(filepath.Join(h.sentinel, "imgs", strings.TrimPrefix(m.hdr.Name, "checkpoint/")), m.data)
		}
	}
	for _, f := range []string{"spec.json", "diff.tar", "imgs/inventory.img"} {
		if _, err := os.Stat(filepath.Join(h.sentinel, f)); err != nil {
			t.Fatalf("the source archive lacks what the sentinel copies: %v", err)
		}
	}
	h.before = snapshot(t, h.sentinel)
	h.mounts = mountsUnder(e.root)
	return h
}

// snapshot describes every entry under dir, links not followed.
func snapshot(t *testing.T, dir string) treesnap.Snapshot {
	t.Helper()
	s, err := treesnap.Take(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// build writes an archive of the source's members rewritten by fn.
func (h *hostile) build(t *testing.T, file string, fn func([]member) []member) string {
	t.Helper()
	ms := make([]member, len(h.members))
	for i, m := range h.members {
		hdr := *m.hdr
		ms[i] = member{&hdr, m.data}
	}
	p := filepath.Join(h.dir, file)
	writeMembers(t, p, fn(ms))
	return p
}

// setMember puts m in place of the member of its name (all of them, and
// whatever lies below it when it names a directory), or at the end.
func setMember(ms []member, m member) []member {
	var out []member
	done := false
	for _, o := range ms {
		name := strings.TrimSuffix(o.hdr.Name, "/")
		if name == m.hdr.Name || strings.HasPrefix(name, m.hdr.Name+"/") {
			if !done {
				out, done = append(out, m), true
			}
			continue
		}
		out = append(out, o)
	}
	if !done {
		out = append(out, m)
	}
	return out
}

func link(name, target string) member {
	return member{&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, nil}
}

// diffMembers returns the members of the source's rootfs-diff.tar.
func (h *hostile) diffMembers(t *testing.T) []member {
	t.Helper()
	for _, m := range h.members {
		if m.hdr.Name == "rootfs-diff.tar" {
			p := filepath.Join(t.TempDir(), "diff.tar")
			os.WriteFile(p, m.data, 0o600)
			return readMembers(t, p)
		}
	}
	t.Fatal("the source archive has no rootfs-diff.tar")
	return nil
}

// withSpec rewrites spec.dump through fn.
func withSpec(t *testing.T, ms []member, fn func(map[string]any)) []member {
	t.Helper()
	for i := range ms {
		if ms[i].hdr.Name == "spec.dump" {
			var s map[string]any
			if err := json.Unmarshal(ms[i].data, &s); err != nil {
				t.Fatal(err)
			}
			fn(s)
			b, _ := json.Marshal(s)
			ms[i].data = b
			return ms
		}
	}
	t.Fatal("no spec.dump")
	return nil
}

// zstdFrame is a zstd frame header declaring a window of 2^(10+exp) bytes
// (no single-segment flag, so the window descriptor is read), then one raw
// block.
func zstdFrame(exp byte) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, exp << 3}
	data := bytes.Repeat([]byte("x"), 64)
	bh := uint32(len(data))<<3 | 1 // last block, raw
	b = append(b, byte(bh), byte(bh>>8), byte(bh>>16))
	return append(b, data...)
}

// within runs stasis and returns stdout, stderr and the error; a run that
// had to be killed after d (a hang) fails the test.
func (e *env) within(t *testing.T, d time.Duration, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, stasisBin, append([]string{"--root", e.root, "--runroot", e.runRoot}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+e.path)
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("stasis %s hung: killed after %v; stderr: %s", strings.Join(args, " "), d, stderr.String())
	}
	t.Logf("stasis %s: %v in %v: %s", strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr.String()))
	return stdout.String(), stderr.String(), err
}

// names of the containers `stasis ps -a` lists.
func (e *env) names(t *testing.T) []string {
	t.Helper()
	out, err := e.try("ps", "-a")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return names
}

// assertClean checks what a refused restore under target must leave: the
// sentinel as it was, no container target (listed by list), no mounts
// beyond the source's, an empty work directory (waiting a little for an
// agent's cleanup after its answer), and src still counting.
func (h *hostile) assertClean(t *testing.T, target string, list func() []string) {
	t.Helper()
	if d := snapshot(t, h.sentinel).Diff(h.before); d != "" {
		t.Errorf("the sentinel outside changed:\n%s", d)
	}
	for _, n := range list() {
		if n == target {
			t.Errorf("a refused restore left container %s", target)
		}
	}
	if got := mountsUnder(h.e.root); got != h.mounts {
		t.Errorf("a refused restore left mounts under the root: %d, want %d", got, h.mounts)
	}
	var work []os.DirEntry
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		work, _ = os.ReadDir(filepath.Join(h.e.root, "work"))
		if len(work) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(work) != 0 {
		t.Errorf("a refused restore left work files: %v", work)
	}
	e := *h.e
	e.t = t
	if s := e.status("src"); s != "running" {
		t.Fatalf("the source container is %q", s)
	}
	e.waitCounter("src", e.counter("src")+2)
}

// hostileCase is one archive a restore must refuse.
type hostileCase struct {
	name  string
	build func(t *testing.T, h *hostile) string
	args  []string // more restore flags
	want  []string // in the error, as written
	// agent: also an upload case, whose error must hold agentWant (want
	// when nil).
	agent     bool
	agentWant []string
}

func hostileCases() []hostileCase {
	return []hostileCase{
		{name: "1 spec.dump as a symlink to a host file", agent: true,
			want: []string{"spec.dump: ", "symlink"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a1.tar", func(ms []member) []member {
					return setMember(ms, link("spec.dump", filepath.Join(h.sentinel, "spec.json")))
				})
			}},
		{name: "2 the image directory as a symlink to a host directory",
			want: []string{"checkpoint: ", "symlink"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a2.tar", func(ms []member) []member {
					return setMember(ms, link("checkpoint", filepath.Join(h.sentinel, "imgs")))
				})
			}},
		{name: "3 rootfs-diff.tar as a symlink to a host tar", agent: true,
			want: []string{"rootfs-diff.tar: ", "symlink"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a3.tar", func(ms []member) []member {
					return setMember(ms, link("rootfs-diff.tar", filepath.Join(h.sentinel, "diff.tar")))
				})
			}},
		{name: "4a deleted.files as a FIFO", agent: true,
			want: []string{"deleted.files: ", "FIFO"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a4a.tar", func(ms []member) []member {
					return setMember(ms, member{&tar.Header{Name: "deleted.files", Typeflag: tar.TypeFifo, Mode: 0o600}, nil})
				})
			}},
		{name: "4b deleted.files as a symlink to /dev/zero", agent: true,
			want: []string{"deleted.files: ", "symlink"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a4b.tar", func(ms []member) []member {
					return setMember(ms, link("deleted.files", "/dev/zero"))
				})
			}},
		{name: "5 a hard link member", agent: true,
			want: []string{"hardlink.dump: ", "hard link"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a5.tar", func(ms []member) []member {
					return append(ms, member{&tar.Header{Name: "hardlink.dump", Typeflag: tar.TypeLink, Linkname: "config.dump"}, nil})
				})
			}},
		{name: "6a a block device in the rootfs diff", agent: true,
			want: []string{"dev/sda", "block device"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a6a.tar", func(ms []member) []member {
					return replace(ms, "rootfs-diff.tar", tarOf(
						&tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755},
						&tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660}))
				})
			}},
		{name: "6b a character device in the rootfs diff", agent: true,
			want: []string{"srv/null", "character device"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a6b.tar", func(ms []member) []member {
					return replace(ms, "rootfs-diff.tar", tarOf(
						&tar.Header{Name: "srv/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}))
				})
			}},
		{name: "8 a bind mount of a host directory in spec.dump", agent: true,
			want: []string{"/data", "--volume"}, agentWant: []string{"/data", "volume"},
			build: func(t *testing.T, h *hostile) string {
				return h.build(t, "a8.tar", func(ms []member) []member {
					return withSpec(t, ms, func(s map[string]any) {
						mounts, _ := s["mounts"].([]any)
						s["mounts"] = append(mounts, map[string]any{"destination": "/data", "type": "bind",
							"source": h.sentinel, "options": []string{"rbind", "rprivate"}})
					})
				})
			}},
		{name: "9a more than --max-unpack", args: []string{"--max-unpack", "64K"},
			want:  []string{"limit"},
			build: func(t *testing.T, h *hostile) string { return h.plain }},
		// zstd's own default limit is 512 MiB (klauspost/compress too):
		// only a window between 128 MiB and that tells stasis' bound.
		{name: "9b a zstd window of 256 MiB", want: []string{"window"},
			build: func(t *testing.T, h *hostile) string {
				p := filepath.Join(h.dir, "a9b.tar.zst")
				os.WriteFile(p, zstdFrame(18), 0o600)
				return p
			}},
		{name: "9c a zstd window of 8 GiB", want: []string{"window"},
			build: func(t *testing.T, h *hostile) string {
				p := filepath.Join(h.dir, "a9c.tar.zst")
				os.WriteFile(p, zstdFrame(23), 0o600) // descriptor byte 0xB8
				return p
			}},
	}
}

func TestHostileArchivesCLI(t *testing.T) {
	h := newHostile(t)
	for i, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			archive := c.build(t, h)
			target := fmt.Sprintf("t%d", i)
			_, stderr, err := h.e.within(t, hostileTimeout, append([]string{"restore", "--import", archive, "--name", target}, c.args...)...)
			if err == nil {
				t.Fatalf("the restore succeeded; want it refused")
			}
			msg := strings.ReplaceAll(stderr, archive, "<archive>")
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not say %q: %s", w, msg)
				}
			}
			h.assertClean(t, target, func() []string { return h.e.names(t) })
		})
	}
}

// Xattrs a container may not own are dropped, not copied: the restore
// works, the file is there, and the upper dir holds neither
// trusted.overlay.opaque nor security.evil.
func TestHostileXattrsDropped(t *testing.T) {
	h := newHostile(t)
	diff := append(h.diffMembers(t),
		member{&tar.Header{Name: "hostile/", Typeflag: tar.TypeDir, Mode: 0o755,
			PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y"}}, nil},
		member{&tar.Header{Name: "hostile/file", Typeflag: tar.TypeReg, Mode: 0o644,
			PAXRecords: map[string]string{"SCHILY.xattr.security.evil": "x"}}, []byte("dropped xattrs\n")})
	archive := h.build(t, "a7.tar", func(ms []member) []member { return replace(ms, "rootfs-diff.tar", tarBytes(diff)) })
	if _, stderr, err := h.e.within(t, hostileTimeout, "restore", "--import", archive, "--name", "x7"); err != nil {
		t.Fatalf("restore with unsafe xattrs in the diff: %v: %s", err, stderr)
	}
	if got := h.e.run("exec", "x7", "cat", "/hostile/file"); got != "dropped xattrs" {
		t.Fatalf("/hostile/file in the container: %q", got)
	}
	files, _ := filepath.Glob(filepath.Join(h.e.root, "containers", "*", "fs", "upper", "hostile", "file"))
	if len(files) != 1 {
		t.Fatalf("want the file in one container's upper dir, found %v", files)
	}
	file, dir := files[0], filepath.Dir(files[0])
	buf := make([]byte, 256)
	if _, err := unix.Lgetxattr(file, "security.evil", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("security.evil on %s: %v, want ENODATA", file, err)
	}
	if _, err := unix.Lgetxattr(dir, "trusted.overlay.opaque", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("trusted.overlay.opaque on %s: %v, want ENODATA", dir, err)
	}
	n, err := unix.Llistxattr(file, buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range strings.Split(string(buf[:n]), "\x00") {
		if strings.HasPrefix(x, "trusted.") || x == "security.evil" {
			t.Errorf("%s carries xattr %s", file, x)
		}
	}
	h.e.waitCounter("x7", h.e.counter("x7")+2)
	if d := snapshot(t, h.sentinel).Diff(h.before); d != "" {
		t.Errorf("the sentinel outside changed:\n%s", d)
	}
	h.e.waitCounter("src", h.e.counter("src")+2)
}

// Bind mounts of a checkpoint from elsewhere get their sources only from
// --volume: without one the restore is refused naming the destination;
// with one the container sees the given directory, not the recorded one;
// a --volume for a destination the checkpoint has no mount at is refused.
func TestHostileVolumeMapping(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.importBusybox()
	recorded, given, other := t.TempDir(), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(recorded, "marker-recorded"), []byte("recorded\n"), 0o644)
	os.WriteFile(filepath.Join(given, "marker-given"), []byte("given\n"), 0o644)
	e.run("run", "--name", "vsrc", "-v", recorded+":/data", "localhost/busybox:e2e", "sh", "-c", counterScript)
	at := e.waitCounter("vsrc", 10)
	archive := filepath.Join(t.TempDir(), "v.tar")
	e.run("checkpoint", "vsrc", "--export", archive, "--compress", "none", "--leave-running")
	before, mounts := snapshot(t, recorded), mountsUnder(e.root)
	clean := func(t *testing.T, target string) {
		t.Helper()
		if d := snapshot(t, recorded).Diff(before); d != "" {
			t.Errorf("the recorded volume changed:\n%s", d)
		}
		for _, n := range e.names(t) {
			if n == target {
				t.Errorf("a refused restore left container %s", target)
			}
		}
		if got := mountsUnder(e.root); got != mounts {
			t.Errorf("a refused restore left mounts: %d, want %d", got, mounts)
		}
		if work, _ := os.ReadDir(filepath.Join(e.root, "work")); len(work) != 0 {
			t.Errorf("a refused restore left work files: %v", work)
		}
		e.waitCounter("vsrc", e.counter("vsrc")+2)
	}

	_, stderr, err := e.within(t, hostileTimeout, "restore", "--import", archive, "--name", "n1")
	if err == nil {
		t.Fatal("restore of a bind mount without --volume succeeded")
	}
	for _, w := range []string{"/data", "--volume"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("error does not say %q: %s", w, stderr)
		}
	}
	clean(t, "n1")

	_, stderr, err = e.within(t, hostileTimeout, "restore", "--import", archive, "--name", "n3",
		"--volume", given+":/data", "--volume", other+":/nope")
	if err == nil {
		t.Fatal("restore with a --volume for a destination the checkpoint lacks succeeded")
	}
	if !strings.Contains(stderr, "/nope") {
		t.Errorf("error does not name /nope: %s", stderr)
	}
	clean(t, "n3")

	if _, stderr, err := e.within(t, hostileTimeout, "restore", "--import", archive, "--name", "n2", "--volume", given+":/data"); err != nil {
		t.Fatalf("restore with --volume: %v: %s", err, stderr)
	}
	ls := e.run("exec", "n2", "ls", "/data")
	if !strings.Contains(ls, "marker-given") || strings.Contains(ls, "marker-recorded") {
		t.Fatalf("/data in the restored container lists %q, want the --volume's marker-given only", ls)
	}
	e.assertContinues("n2", at)
	if d := snapshot(t, recorded).Diff(before); d != "" {
		t.Errorf("the recorded volume changed:\n%s", d)
	}
}

// SIGTERM in the middle of a restore of a 300 MiB archive: stasis stops
// within seconds, fails, and leaves no container, work files or mounts.
func TestHostileRestoreSIGTERM(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.runBig("big")
	archive := filepath.Join(t.TempDir(), "big.tar")
	e.run("checkpoint", "big", "--export", archive, "--compress", "none", "--leave-running")
	mounts := mountsUnder(e.root)
	cmd := e.cmd("restore", "--import", archive, "--name", "b2")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Signal once it is unpacking: its work directory exists.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if work, _ := os.ReadDir(filepath.Join(e.root, "work")); len(work) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the restore made no work directory within 10 s")
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	start := time.Now()
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Logf("restore after SIGTERM: %v in %v: %s", err, time.Since(start).Round(time.Millisecond), stderr.String())
		if err == nil {
			t.Fatal("the restore succeeded despite SIGTERM (did it finish before the signal?)")
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("restore did not exit within 10 s of SIGTERM: %s", stderr.String())
	}
	for _, n := range e.names(t) {
		if n == "b2" {
			t.Errorf("an interrupted restore left container b2")
		}
	}
	if work, _ := os.ReadDir(filepath.Join(e.root, "work")); len(work) != 0 {
		t.Errorf("an interrupted restore left work files: %v", work)
	}
	if got := mountsUnder(e.root); got != mounts {
		t.Errorf("an interrupted restore left mounts: %d, want %d", got, mounts)
	}
	n := lastTick(t, e, "big")
	waitLogLine(t, e, "big", fmt.Sprintf("tick %d", n+2))
}

// debianTar is the busybox rootfs as a Debian tarball has it: names under
// "./", /tmp sticky, a setuid and a setgid (group shadow) program.
func debianTar(t *testing.T) string {
	t.Helper()
	var ms []member
	ms = append(ms, member{&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, nil})
	for _, m := range readMembers(t, busyboxTar(t)) {
		m.hdr.Name = "./" + m.hdr.Name
		ms = append(ms, m)
	}
	ms = append(ms,
		member{&tar.Header{Name: "./usr/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		member{&tar.Header{Name: "./usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		member{&tar.Header{Name: "./usr/bin/suid", Typeflag: tar.TypeReg, Mode: 0o4755, Uname: "root", Gname: "root"}, []byte("#!/bin/sh\n")},
		member{&tar.Header{Name: "./usr/bin/sgid", Typeflag: tar.TypeReg, Mode: 0o2755, Gid: 42, Uname: "root", Gname: "shadow"}, []byte("#!/bin/sh\n")})
	for _, m := range ms {
		if m.hdr.Name == "./tmp/" && m.hdr.Mode != 0o1777 {
			t.Fatalf("busyboxTar's /tmp is %o", m.hdr.Mode)
		}
	}
	p := filepath.Join(t.TempDir(), "debian.tar")
	writeMembers(t, p, ms)
	return p
}

// Sticky, setuid and setgid bits survive image import, run, and a
// checkpoint and restore; so does a setuid file the container made.
func TestHostileModesSurvive(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.run("image", "import", debianTar(t), "localhost/debian-like:e2e")
	e.run("run", "--name", "c", "localhost/debian-like:e2e", "sh", "-c", "touch /srv/rt && chmod 4755 /srv/rt && "+counterScript)
	at := e.waitCounter("c", 10)
	const want = "1777\n4755\n2755"
	stat := []string{"stat", "-c", "%a", "/tmp", "/usr/bin/suid", "/usr/bin/sgid"}
	if got := e.run(append([]string{"exec", "c"}, stat...)...); got != want {
		t.Errorf("modes after import and run: %q, want %q", got, want)
	}
	if got := e.run("exec", "c", "stat", "-c", "%a", "/srv/rt"); got != "4755" {
		t.Errorf("the container's own setuid file: %q", got)
	}
	archive := filepath.Join(t.TempDir(), "c.tar")
	e.run("checkpoint", "c", "--export", archive, "--leave-running")
	e.run("restore", "--import", archive, "--name", "c2")
	e.assertContinues("c2", at)
	if got := e.run(append([]string{"exec", "c2"}, stat...)...); got != want {
		t.Errorf("modes after checkpoint and restore: %q, want %q", got, want)
	}
	if got := e.run("exec", "c2", "stat", "-c", "%a", "/srv/rt"); got != "4755" {
		t.Errorf("the container's setuid file after checkpoint and restore: %q, want 4755", got)
	}
}

// The agent's upload endpoint refuses the same archives with 400, promptly
// and cleanly; a bind mount is allowed with ?volume=SRC:DST.
func TestHostileAgentUpload(t *testing.T) {
	h := newHostile(t)
	e := h.e
	a := startAgent(t, e)
	c := a.client(t, "", "")
	c.Timeout = hostileTimeout
	agentNames := func(t *testing.T) func() []string {
		return func() []string {
			code, b := call(t, c, "GET", a.url+"/v1/containers", adminToken, nil)
			var list []struct{ Name string }
			if err := json.Unmarshal(b, &list); code != 200 || err != nil {
				t.Fatalf("list containers: %d %s", code, b)
			}
			var names []string
			for _, l := range list {
				names = append(names, l.Name)
			}
			return names
		}
	}
	upload := func(t *testing.T, archive, query string) (int, string) {
		t.Helper()
		data, err := os.ReadFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("PUT", a.url+"/v1/restore?"+query, bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("upload (hung?) after %v: %v", time.Since(start), err)
		}
		defer resp.Body.Close()
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		t.Logf("PUT /v1/restore?%s: %d in %v: %s", query, resp.StatusCode, time.Since(start).Round(time.Millisecond), strings.TrimSpace(body.String()))
		return resp.StatusCode, body.String()
	}
	for i, hc := range hostileCases() {
		if !hc.agent {
			continue
		}
		t.Run(hc.name, func(t *testing.T) {
			target := fmt.Sprintf("u%d", i)
			code, body := upload(t, hc.build(t, h), "name="+target)
			if code != 400 {
				t.Errorf("upload: %d, want 400", code)
			}
			want := hc.agentWant
			if want == nil {
				want = hc.want
			}
			for _, w := range want {
				if !strings.Contains(body, w) {
					t.Errorf("error does not say %q: %s", w, body)
				}
			}
			h.assertClean(t, target, agentNames(t))
		})
	}

	t.Run("8 volume mapping", func(t *testing.T) {
		recorded, given := t.TempDir(), t.TempDir()
		os.WriteFile(filepath.Join(recorded, "marker-recorded"), []byte("recorded\n"), 0o644)
		os.WriteFile(filepath.Join(given, "marker-given"), []byte("given\n"), 0o644)
		ve := *e
		ve.t = t
		ve.run("run", "--name", "vsrc", "-v", recorded+":/data", "localhost/busybox:e2e", "sh", "-c", counterScript)
		at := ve.waitCounter("vsrc", 10)
		archive := filepath.Join(h.dir, "v.tar")
		ve.run("checkpoint", "vsrc", "--export", archive, "--compress", "none", "--leave-running")
		h.mounts = mountsUnder(e.root)
		code, body := upload(t, archive, "name=v1")
		if code != 400 || !strings.Contains(body, "/data") || !strings.Contains(body, "volume") {
			t.Errorf("upload of a bind mount without volume=: %d %s, want 400 naming /data and volume", code, body)
		}
		h.assertClean(t, "v1", agentNames(t))
		code, body = upload(t, archive, "name=v2&volume="+url.QueryEscape(given+":/data"))
		if code != 200 {
			t.Fatalf("upload with volume=: %d %s", code, body)
		}
		ls := ve.run("exec", "v2", "ls", "/data")
		if !strings.Contains(ls, "marker-given") || strings.Contains(ls, "marker-recorded") {
			t.Fatalf("/data in the restored container lists %q, want the volume's marker-given only", ls)
		}
		ve.assertContinues("v2", at)
	})

	// The agent's --max-unpack bounds an upload's unpacking: 413, and
	// nothing is left.
	t.Run("9 --max-unpack", func(t *testing.T) {
		h.mounts = mountsUnder(e.root) // with the containers of the cases above
		small := startAgentWith(t, e, newPKI(t, "stasis-small-ca"), "", nil, "--max-unpack", "64K")
		sc := small.client(t, "", "")
		sc.Timeout = hostileTimeout
		data, err := os.ReadFile(h.plain)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("PUT", small.url+"/v1/restore?name=big", bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := sc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body.String(), "limit") {
			t.Errorf("upload past --max-unpack: %d %s, want 413 naming the limit", resp.StatusCode, body.String())
		}
		h.assertClean(t, "big", agentNames(t))
	})
}

// A lazy restore reads its memory from the archive while the process runs:
// a frame altered in the archive is found when it is read (each frame is
// checked against the index the .sha256 file vouches for), and the process
// is killed, never left running on memory that is not its own. The eager
// restore of the same archive is refused before anything runs.
func TestHostileLazyPagesAltered(t *testing.T) {
	e := newEnv(t)
	memSample(t, e, "alt")
	archive := filepath.Join(t.TempDir(), "alt.tar.zst")
	e.run("checkpoint", "alt", "--export", archive)
	e.run("rm", "alt")
	b, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff // inside the 96 MiB of the sample's state
	if err := os.WriteFile(archive, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.fails("restore", "--import", archive, "--name", "eager"); !strings.Contains(out, "altered") {
		t.Fatalf("the eager restore of an altered archive did not say so: %s", out)
	}
	if _, err := e.try("restore", "--import", archive, "--lazy-pages", "--name", "alt"); err == nil {
		// It ran before the altered frame was read; the frame is read in
		// the background at the latest, and then the process must die.
		deadline := time.Now().Add(60 * time.Second)
		for e.status("alt") == "running" {
			if time.Now().After(deadline) {
				t.Fatal("a lazily restored process kept running on an altered archive")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	logs, _ := filepath.Glob(filepath.Join(e.root, "logs", "*lazy-pages.log"))
	if len(logs) == 0 {
		t.Fatal("the failed lazy-pages server left no log")
	}
	if b, _ := os.ReadFile(logs[0]); !bytes.Contains(b, []byte("does not match its digest")) {
		t.Fatalf("the lazy-pages log does not say why it failed:\n%s", b[max(0, len(b)-2000):])
	}
}
