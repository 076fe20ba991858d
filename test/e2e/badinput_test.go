package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// members reads a plain tar archive into name -> header and data.
type member struct {
	hdr  *tar.Header
	data []byte
}

func readMembers(t *testing.T, path string) []member {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []member
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out = append(out, member{h, b})
	}
}

// tarBytes builds a tar of members; each header's size is its data's.
func tarBytes(ms []member) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := *m.hdr
		h.Size = int64(len(m.data))
		tw.WriteHeader(&h)
		tw.Write(m.data)
	}
	tw.Close()
	return buf.Bytes()
}

func writeMembers(t *testing.T, path string, ms []member) {
	t.Helper()
	if err := os.WriteFile(path, tarBytes(ms), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tarOf builds a small tar from headers; regular files get "evil" as data.
func tarOf(entries ...*tar.Header) []byte {
	var ms []member
	for _, h := range entries {
		var data []byte
		if h.Typeflag == tar.TypeReg {
			data = []byte("evil")
		}
		ms = append(ms, member{h, data})
	}
	return tarBytes(ms)
}

// mutate rewrites an archive's members through fn into a new file.
func mutate(t *testing.T, src string, fn func([]member) []member) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bad.tar")
	writeMembers(t, p, fn(readMembers(t, src)))
	return p
}

func replace(ms []member, name string, data []byte) []member {
	for i := range ms {
		if ms[i].hdr.Name == name {
			ms[i].data = data
		}
	}
	return ms
}

func TestBadArchivesAreRefusedCleanly(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("src", 3)
	dir := t.TempDir()
	plain := filepath.Join(dir, "good.tar")
	e.run("checkpoint", "src", "--export", plain, "--compress", "none", "--leave-running")
	zst := filepath.Join(dir, "good.tar.zst")
	e.run("checkpoint", "src", "--export", zst, "--leave-running")
	zdata, _ := os.ReadFile(zst)

	outside := t.TempDir() // where a hostile archive would like to write
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("keep me"), 0o644)
	rel := "../../../../../../../../../.." + outside

	cases := map[string]struct {
		archive func() string
		want    string
	}{
		"truncated": {func() string {
			p := filepath.Join(t.TempDir(), "t.tar.zst")
			os.WriteFile(p, zdata[:len(zdata)/2], 0o600)
			return p
		}, "corrupt or truncated"},
		"corrupt zstd": {func() string {
			p := filepath.Join(t.TempDir(), "c.tar.zst")
			bad := append([]byte{}, zdata...)
			for i := len(bad) / 3; i < len(bad)/3+64; i++ {
				bad[i] ^= 0x5a
			}
			os.WriteFile(p, bad, 0o600)
			return p
		}, "corrupt or truncated"},
		"no spec.dump": {func() string {
			return mutate(t, plain, func(ms []member) []member {
				var out []member
				for _, m := range ms {
					if m.hdr.Name != "spec.dump" {
						out = append(out, m)
					}
				}
				return out
			})
		}, "spec.dump is missing"},
		"diff with ../": {func() string {
			return mutate(t, plain, func(ms []member) []member {
				return replace(ms, "rootfs-diff.tar", tarOf(&tar.Header{Name: rel + "/evil-dotdot", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}))
			})
		}, "unsafe"},
		"diff with absolute path": {func() string {
			return mutate(t, plain, func(ms []member) []member {
				return replace(ms, "rootfs-diff.tar", tarOf(&tar.Header{Name: outside + "/evil-abs", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}))
			})
		}, "unsafe"},
		"diff with escaping symlink": {func() string {
			return mutate(t, plain, func(ms []member) []member {
				return replace(ms, "rootfs-diff.tar", tarOf(
					&tar.Header{Name: "esc", Typeflag: tar.TypeSymlink, Linkname: rel, Mode: 0o777},
					&tar.Header{Name: "esc/evil-link", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}))
			})
		}, "unsafe"},
		"deleted.files outside": {func() string {
			return mutate(t, plain, func(ms []member) []member {
				b, _ := json.Marshal([]string{rel + "/victim"})
				return append(ms, member{&tar.Header{Name: "deleted.files", Typeflag: tar.TypeReg, Mode: 0o600}, b})
			})
		}, "unsafe"},
		"not an archive": {func() string {
			p := filepath.Join(t.TempDir(), "x.tar")
			os.WriteFile(p, []byte("hello, this is not a tar file at all"), 0o600)
			return p
		}, "corrupt or truncated"},
	}
	before := e.run("ps", "-aq")
	mountsBefore := mountsUnder(e.root)
	i := 0
	for name, c := range cases {
		i++
		t.Run(name, func(t *testing.T) {
			msg := e.fails("restore", "--import", c.archive(), "--name", "victim-"+strconv.Itoa(i))
			if !strings.Contains(msg, c.want) {
				t.Errorf("error %q does not say %q", msg, c.want)
			}
			if got := e.run("ps", "-aq"); got != before {
				t.Errorf("a failed restore left a container: %q", got)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("something landed outside the rootfs: %v", ents)
			}
			if b, _ := os.ReadFile(victim); string(b) != "keep me" {
				t.Errorf("victim file outside the rootfs was touched")
			}
			if got := mountsUnder(e.root); got != mountsBefore {
				t.Errorf("a failed restore left a mount behind: %d mounts, want %d", got, mountsBefore)
			}
			work, _ := os.ReadDir(filepath.Join(e.root, "work"))
			if len(work) != 0 {
				t.Errorf("a failed restore left work files: %v", work)
			}
		})
	}
	if s := e.status("src"); s != "running" {
		t.Fatalf("source container is %q", s)
	}

	// A missing base image: clear error, nothing made.
	other := newEnv(t)
	msg := other.fails("restore", "--import", zst)
	if !strings.Contains(msg, "not in the store") {
		t.Fatalf("restore without base image: %s", msg)
	}
	if got := other.run("ps", "-aq"); got != "" {
		t.Fatalf("restore without base image left %q", got)
	}
	if msg := e.fails("run", "localhost/nosuch:1", "true"); !strings.Contains(msg, "image not found") {
		t.Fatalf("run of a missing image: %s", msg)
	}
	if msg := e.fails("checkpoint", "src", "--compress", "lz4"); !strings.Contains(msg, "unknown compression") {
		t.Fatalf("bad --compress: %s", msg)
	}
	if msg := e.fails("checkpoint", "src", "--export", "/nonexistent/dir/x.tar"); !strings.Contains(msg, "does not exist") {
		t.Fatalf("export into a missing directory: %s", msg)
	}
	if msg := e.fails("restore", "--import", "/nonexistent.tar"); !strings.Contains(msg, "no such file") {
		t.Fatalf("restore of a missing archive: %s", msg)
	}
	if s := e.status("src"); s != "running" {
		t.Fatalf("source container is %q after the refused commands", s)
	}
	e.run("stop", "src")
	if msg := e.fails("checkpoint", "src"); !strings.Contains(msg, "not running") {
		t.Fatalf("checkpoint of a stopped container: %s", msg)
	}
}

// CRIU killed in the middle of a dump: the container keeps running, thawed,
// no archive appears, and the next checkpoint works.
func TestCRIUKilledMidDump(t *testing.T) {
	e := newEnv(t)
	e.importSample()
	e.run("run", "--name", "big", "localhost/sample:e2e", "/sample", "__sample", "--warmup", "0s", "--mib", "600")
	waitLogLine(t, e, "big", "tick 3")

	wrap := t.TempDir()
	real := "/usr/local/sbin/criu"
	if _, err := os.Stat(real); err != nil {
		real = "/usr/sbin/criu"
	}
	script := "#!/bin/sh\nif [ \"$1\" = swrk ]; then (sleep 0.4; kill -9 $$) & fi\nexec " + real + " \"$@\"\n"
	os.WriteFile(filepath.Join(wrap, "criu"), []byte(script), 0o755)
	out := t.TempDir()
	e.path = wrap + ":" + e.path
	msg := e.fails("checkpoint", "big", "--export", filepath.Join(out, "big.tar.zst"))
	e.path = strings.TrimPrefix(e.path, wrap+":")
	t.Logf("checkpoint with CRIU killed: %s", msg)
	if s := e.status("big"); s != "running" {
		t.Fatalf("after CRIU was killed the container is %q, want running", s)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Fatalf("a failed checkpoint left %v", ents)
	}
	n := lastTick(t, e, "big")
	waitLogLine(t, e, "big", "tick "+strconv.Itoa(n+3))
	e.run("checkpoint", "big", "--export", filepath.Join(out, "big.tar.zst"), "--leave-running")
	if ents, _ := os.ReadDir(out); len(ents) != 2 { // the archive and its .sha256
		t.Fatalf("checkpoint after recovery: %v", ents)
	}
}

func fileMember(t *testing.T, name, src string) member {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	return member{&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755}, b}
}

func waitLogLine(t *testing.T, e *env, name, line string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(e.run("logs", name), line+"\n") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never logged %q", name, line)
}

func lastTick(t *testing.T, e *env, name string) int {
	n := -1
	for _, l := range strings.Split(e.run("logs", name), "\n") {
		var v int
		if _, err := fmt.Sscanf(l, "tick %d", &v); err == nil {
			n = v
		}
	}
	return n
}

// mountsUnder counts mount points below dir.
func mountsUnder(dir string) int {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			n++
		}
	}
	return n
}
