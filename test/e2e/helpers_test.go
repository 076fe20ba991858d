// Package e2e drives the stasis binary as a user would, against real runc,
// CRIU, overlayfs and Podman. It needs root.
package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var stasisBin string

// notRoot, when set, is why every test skips: they run runc, CRIU and
// overlay mounts.
var notRoot string

// requireRoot skips t when the tests do not run as root, saying so.
func requireRoot(t *testing.T) {
	t.Helper()
	if notRoot != "" {
		t.Skip(notRoot)
	}
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		notRoot = "e2e tests need root (runc, CRIU, overlayfs)"
		os.Exit(m.Run())
	}
	stasisBin = os.Getenv("STASIS_BIN")
	if stasisBin == "" {
		dir, _ := os.MkdirTemp("", "stasis-bin-")
		stasisBin = filepath.Join(dir, "stasis")
		cmd := exec.Command("go", "build", "-o", stasisBin, "../../cmd/stasis")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("build stasis: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// env is one isolated stasis installation: its own root and run root.
type env struct {
	t             *testing.T
	root, runRoot string
	path          string // PATH for stasis, to slip in a CRIU wrapper
}

func newEnv(t *testing.T) *env {
	t.Helper()
	requireRoot(t)
	root, err := os.MkdirTemp("/var/tmp", "stasis-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	run, err := os.MkdirTemp("/run", "stasis-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, root: root, runRoot: run, path: "/usr/local/sbin:" + os.Getenv("PATH")}
	t.Cleanup(func() {
		out, _ := e.try("ps", "-aq")
		for _, id := range strings.Fields(out) {
			e.try("rm", "-f", id)
		}
		os.RemoveAll(root)
		os.RemoveAll(run)
	})
	return e
}

func (e *env) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(stasisBin, append([]string{"--root", e.root, "--runroot", e.runRoot}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+e.path)
	return cmd
}

// try runs stasis and returns its stdout, or stderr in the error.
func (e *env) try(args ...string) (string, error) {
	cmd := e.cmd(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("stasis %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// run runs stasis and fails the test on error.
func (e *env) run(args ...string) string {
	e.t.Helper()
	out, err := e.try(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// fails runs stasis, expects failure and returns the error text.
func (e *env) fails(args ...string) string {
	e.t.Helper()
	out, err := e.try(args...)
	if err == nil {
		e.t.Fatalf("stasis %s succeeded, want failure; output %q", strings.Join(args, " "), out)
	}
	return err.Error()
}

// busyboxTar writes a rootfs tar with busybox-static and its applets, plus
// /etc/passwd knowing user "app" (1000).
func busyboxTar(t *testing.T) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed: %v", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rootfs.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	dir := func(n string, mode int64) {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: mode})
	}
	file := func(n string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))})
		tw.Write(data)
	}
	for _, d := range []string{"bin/", "etc/", "proc/", "sys/", "dev/", "home/", "home/app/", "srv/"} {
		dir(d, 0o755)
	}
	dir("tmp/", 0o1777)
	file("bin/busybox", 0o755, bb)
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
		}
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"))
	file("etc/group", 0o644, []byte("root:x:0:\napp:x:1000:\n"))
	file("etc/motd", 0o644, []byte("from the image\n"))
	file("srv/doomed", 0o644, []byte("delete me\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// runCounter runs the busybox counter as name and waits until it has
// counted to n; it returns the count reached.
func (e *env) runCounter(name string, n int) int {
	e.t.Helper()
	e.run("run", "--name", name, "localhost/busybox:e2e", "sh", "-c", counterScript)
	return e.waitCounter(name, n)
}

// runBig runs the sample program holding 300 MiB as name, until it ticks:
// a dump long enough to be interrupted.
func (e *env) runBig(name string) {
	e.t.Helper()
	e.importSample()
	e.run("run", "--name", name, "localhost/sample:e2e", "/sample", "__sample", "--warmup", "0s", "--mib", "300")
	waitLogLine(e.t, e, name, "tick 1")
}

// importSample imports busybox plus the sample program (the stasis binary,
// run as /sample __sample) as localhost/sample:e2e, and returns the name.
func (e *env) importSample() string {
	e.t.Helper()
	img := filepath.Join(e.t.TempDir(), "sample.tar")
	writeMembers(e.t, img, append(readMembers(e.t, busyboxTar(e.t)), fileMember(e.t, "sample", stasisBin)))
	e.run("image", "import", img, "localhost/sample:e2e")
	return "localhost/sample:e2e"
}

// counterScript counts 10 times a second, in its log and in /tmp/last.
// /tmp/last is overwritten in place (<>, no truncation; a number never
// gets shorter), so a checkpoint that freezes the shell mid-write never
// catches it empty, and no process is forked for it (frequent forks make
// the cgroup freezer give up).
const counterScript = `i=0; while true; do echo "count $i"; echo $i 1<>/tmp/last; i=$((i+1)); sleep 0.1; done`

// importBusybox imports the busybox image as localhost/busybox:e2e.
func (e *env) importBusybox() {
	e.t.Helper()
	e.run("image", "import", busyboxTar(e.t), "localhost/busybox:e2e")
}

// counter reads the counter of a running container.
func (e *env) counter(name string) int {
	e.t.Helper()
	// The counter rewrites the file: a read can catch it empty.
	var out string
	for i := 0; i < 20; i++ {
		out = e.run("exec", name, "cat", "/tmp/last")
		if n, err := strconv.Atoi(strings.TrimSpace(out)); err == nil {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("counter of %s: %q", name, out)
	return 0
}

// waitCounter waits until the counter of name reaches at least n.
func (e *env) waitCounter(name string, n int) int {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if out, err := e.try("exec", name, "cat", "/tmp/last"); err == nil {
			if v, err := strconv.Atoi(strings.TrimSpace(out)); err == nil && v >= n {
				return v
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("counter of %s did not reach %d", name, n)
	return 0
}

// logCounts returns the "count N" values in a container's log, in order.
func (e *env) logCounts(name string) []int {
	e.t.Helper()
	var out []int
	for _, l := range strings.Split(e.run("logs", name), "\n") {
		if v, ok := strings.CutPrefix(l, "count "); ok {
			n, _ := strconv.Atoi(v)
			out = append(out, n)
		}
	}
	return out
}

// status is a container's status word (running, checkpointed, exited...)
// in `stasis ps`.
func (e *env) status(name string) string {
	e.t.Helper()
	for _, l := range strings.Split(e.run("ps", "-a"), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 1 && f[1] == name {
			for _, w := range []string{"running", "paused", "checkpointed", "exited"} {
				if strings.Contains(l, " "+w) {
					return w
				}
			}
		}
	}
	return ""
}

// assertContinues checks that after a restore the counter did not start
// over: shortly after the restore it is already at least the value it had at
// checkpoint time (a counter started afresh would be near 0; callers
// checkpoint at 10 or more), and it keeps counting.
func (e *env) assertContinues(name string, atCheckpoint int) {
	e.t.Helper()
	if atCheckpoint < 10 {
		e.t.Fatalf("checkpoint later: at %d a restart cannot be told from a restore", atCheckpoint)
	}
	time.Sleep(300 * time.Millisecond)
	if v := e.counter(name); v < atCheckpoint {
		e.t.Fatalf("%s counts %d, below its checkpointed %d: it started over", name, v, atCheckpoint)
	}
	e.waitCounter(name, atCheckpoint+3)
}

func linkCount(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 0
}

// waitHelperGone waits for the lazy-pages helper to finish and leave no
// work behind.
func waitHelperGone(t *testing.T, e *env) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := exec.Command("pgrep", "-f", "__lazy-pages").Output()
		work, _ := os.ReadDir(filepath.Join(e.root, "work"))
		if len(out) == 0 && len(work) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazy-pages helper %q or work files %v left behind", out, work)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
