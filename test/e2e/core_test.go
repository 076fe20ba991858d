package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCounterInPlaceTwiceThenAfterRemove(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "-d", "--name", "web", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("web", 10)

	for round := 0; round < 2; round++ {
		e.run("checkpoint", "web")
		if s := e.status("web"); s != "checkpointed" {
			t.Fatalf("round %d: status after checkpoint %q, want checkpointed", round, s)
		}
		counts := e.logCounts("web")
		at := counts[len(counts)-1]
		e.run("restore", "web")
		if s := e.status("web"); s != "running" {
			t.Fatalf("round %d: status after restore %q", round, s)
		}
		e.assertContinues("web", at)
		zeros := 0
		for _, c := range e.logCounts("web") {
			if c == 0 {
				zeros++
			}
		}
		if zeros != 1 {
			t.Fatalf("round %d: the counter started over (%d times count 0)", round, zeros)
		}
	}
	if n := len(strings.Split(e.run("checkpoints"), "\n")) - 1; n != 2 {
		t.Fatalf("want 2 checkpoints listed, got %d", n)
	}

	// The original removed: its latest stored checkpoint brings it back.
	e.run("checkpoint", "web")
	counts := e.logCounts("web")
	at := counts[len(counts)-1]
	e.run("rm", "web")
	if strings.Contains(e.run("ps", "-a"), "web") {
		t.Fatal("web still listed after rm")
	}
	e.run("restore", "web")
	e.assertContinues("web", at)
	if first := e.logCounts("web")[0]; first <= at {
		t.Fatalf("restored after removal, first count %d, want > %d", first, at)
	}
}

func TestRestoreUnderNewNameWhileOriginalRuns(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	at := e.runCounter("orig", 10)
	archive := filepath.Join(t.TempDir(), "orig.tar.zst")
	e.run("checkpoint", "orig", "--export", archive, "--leave-running")
	e.run("restore", "--import", archive, "--name", "copy")
	if s := e.status("orig"); s != "running" {
		t.Fatalf("original is %q after a copy was restored", s)
	}
	e.assertContinues("copy", at)
	if first := e.logCounts("copy")[0]; first < 10 {
		t.Fatalf("copy's first count is %d: it started over", first)
	}
	// Name clash: refused, nothing new made.
	msg := e.fails("restore", "--import", archive, "--name", "orig")
	if !strings.Contains(msg, "already in use") {
		t.Fatalf("restore under a used name: %s", msg)
	}
	msg = e.fails("run", "--name", "copy", "localhost/busybox:e2e", "true")
	if !strings.Contains(msg, "already in use") {
		t.Fatalf("run under a used name: %s", msg)
	}
	// In place over a running container: refused, the container untouched.
	e.run("checkpoint", "copy", "--leave-running")
	if msg := e.fails("restore", "copy"); !strings.Contains(msg, "stop it") {
		t.Fatalf("restore over a running container: %s", msg)
	}
	e.waitCounter("copy", e.counter("copy")+2)
}

// Files, environment, working directory, user and a process tree all come
// back, through every compression.
func TestStateSurvivesEveryCompression(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	vol := t.TempDir()
	os.WriteFile(filepath.Join(vol, "hostfile"), []byte("from host\n"), 0o644)
	script := `echo created > /tmp/new; echo changed > /etc/motd; rm /srv/doomed; mkdir -p /home/app/d;
sleep 1000 & sleep 1001 & ` + counterScript
	e.run("run", "--name", "st", "-e", "SECRET_MODE=on", "-w", "/home/app", "-v", vol+":/data",
		"localhost/busybox:e2e", "sh", "-c", script)
	e.waitCounter("st", 3)

	for _, comp := range []string{"zstd", "gzip", "none"} {
		t.Run(comp, func(t *testing.T) {
			archive := filepath.Join(t.TempDir(), "st.archive")
			e.run("checkpoint", "st", "--export", archive, "--compress", comp, "--leave-running")
			name := "st-" + comp
			// An archive is not trusted to pick host paths: its bind mount
			// fails without a volume for it, and restores with one.
			if msg := e.fails("restore", "--import", archive, "--name", name); !strings.Contains(msg, "/data") || !strings.Contains(msg, "--volume") {
				t.Fatalf("restore of a bind mount without --volume: %s", msg)
			}
			e.run("restore", "--import", archive, "--name", name, "--volume", vol+":/data")
			check := map[string]string{
				"cat /tmp/new":                                   "created",
				"cat /etc/motd":                                  "changed",
				"test -e /srv/doomed || echo gone":               "gone",
				"cat /data/hostfile":                             "from host",
				"tr '\\0' '\\n' < /proc/1/environ | grep SECRET": "SECRET_MODE=on",
				"readlink /proc/1/cwd":                           "/home/app",
				"ps -o args | grep -cE '^sleep 100[01]'":         "2",
			}
			for cmd, want := range check {
				got := strings.TrimSpace(e.run("exec", name, "sh", "-c", cmd))
				if got != want {
					t.Errorf("%s: %q, want %q", cmd, got, want)
				}
			}
			e.run("rm", "-f", name)
		})
	}
}

func TestUserComesBack(t *testing.T) {
	// CRIU reads the rlimits of the processes it dumps, which for another
	// uid or gid needs CAP_SYS_RESOURCE; some sandboxes (this project's CI)
	// lack it, and there no engine can dump a non-root process.
	if !hasCapSysResource(t) {
		t.Skip("CRIU cannot dump processes of another user without CAP_SYS_RESOURCE")
	}
	for _, u := range []string{"0:1000", "app"} {
		e := newEnv(t)
		e.importBusybox()
		e.run("run", "--name", "u", "-u", u, "localhost/busybox:e2e", "sh", "-c", `i=0; while true; do echo $i > /tmp/last; i=$((i+1)); sleep 0.1; done`)
		e.waitCounter("u", 2)
		want := e.run("exec", "u", "stat", "-c", "%u:%g", "/proc/1")
		e.run("checkpoint", "u")
		e.run("restore", "u")
		if got := e.run("exec", "u", "stat", "-c", "%u:%g", "/proc/1"); got != want {
			t.Fatalf("user %s: restored init runs as %s, want %s", u, got, want)
		}
	}
}

func hasCapSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return caps&(1<<24) != 0
		}
	}
	return false
}

// memSample runs the sample program with incompressible memory next to two
// other processes and returns a function that asks it for the digest of
// its memory, so a test can tell that memory came back byte for byte.
func memSample(t *testing.T, e *env, name string) (digest func() string) {
	e.importSample()
	e.run("run", "--name", name, "localhost/sample:e2e", "sh", "-c",
		"/sample __sample --warmup 0s --mib 96 & echo $! > /tmp/sample.pid; sleep 1000 & wait")
	waitLogLine(t, e, name, "tick 2")
	return memDigest(t, e, name)
}

// memDigest asks memSample's program in container name for the digest of
// its memory.
func memDigest(t *testing.T, e *env, name string) func() string {
	re := regexp.MustCompile(`digest ([0-9a-f]{64})`)
	return func() string {
		before := len(re.FindAllString(e.run("logs", name), -1))
		e.run("exec", name, "sh", "-c", "kill -USR1 $(cat /tmp/sample.pid)")
		for i := 0; i < 200; i++ {
			got := re.FindAllStringSubmatch(e.run("logs", name), -1)
			if len(got) > before {
				return got[len(got)-1][1]
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s printed no digest", name)
		return ""
	}
}

// A stopping zstd checkpoint streams the tasks' pages out of CRIU through
// FIFOs. Several processes, incompressible memory: every byte must come
// back, and the archive holds regular page images, not FIFOs.
func TestStreamedCheckpointKeepsMemoryExact(t *testing.T) {
	e := newEnv(t)
	digest := memSample(t, e, "mem")
	want := digest()

	var res struct{ Archive string }
	if err := json.Unmarshal([]byte(e.run("checkpoint", "mem", "--print-stats")), &res); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("tar", "--zstd", "-tvf", res.Archive).CombinedOutput()
	if err != nil {
		t.Fatalf("tar cannot list the archive: %v: %s", err, list)
	}
	pages := 0
	for _, l := range strings.Split(string(list), "\n") {
		if strings.Contains(l, "checkpoint/pages-") {
			pages++
			if !strings.HasPrefix(l, "-") {
				t.Errorf("page image is not a regular file: %s", l)
			}
		}
	}
	if pages < 3 {
		t.Fatalf("want a page image per process (3), archive lists:\n%s", list)
	}
	// Eager, a stored (indexed) archive is unpacked into a tmpfs of the
	// restore's own, its frames checked and decompressed on every core.
	var rs struct {
		PagesFrom string `json:"pages_from"`
	}
	if err := json.Unmarshal([]byte(e.run("restore", "mem", "--print-stats")), &rs); err != nil {
		t.Fatal(err)
	}
	if rs.PagesFrom != "memory" {
		t.Errorf("an eager restore of an indexed archive read its pages from %q", rs.PagesFrom)
	}
	if got := digest(); got != want {
		t.Fatalf("memory digest after restore %s, want %s", got, want)
	}
	if out, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(out), filepath.Join(e.root, "work")+"/") {
		t.Errorf("the restore left a mount in its work directory:\n%s", out)
	}
}

// A lazy restore runs before its memory is in; the memory must still come
// back whole, the helper must finish and clean up, and the container must
// checkpoint again (which waits for the last pages).
func TestLazyRestoreBringsAllMemoryBack(t *testing.T) {
	e := newEnv(t)
	digest := memSample(t, e, "lazy")
	want := digest()
	archive := filepath.Join(t.TempDir(), "lazy.tar.zst")
	e.run("checkpoint", "lazy", "--export", archive)
	e.run("rm", "lazy")

	var res struct {
		CRIU struct {
			PagesRestored int `json:"pages_restored"`
		}
		PagesFrom string `json:"pages_from"`
	}
	if err := json.Unmarshal([]byte(e.run("restore", "--import", archive, "--lazy-pages", "--print-stats")), &res); err != nil {
		t.Fatal(err)
	}
	// stasis' archive has a frame index: the pages are served from it,
	// never unpacked.
	if res.PagesFrom != "archive" {
		t.Fatalf("a lazy restore of an indexed archive took its pages from %q", res.PagesFrom)
	}
	// 96 MiB are 24576 pages; a lazy restore copies only the few that
	// cannot wait (stacks, non-anonymous memory).
	if res.CRIU.PagesRestored == 0 || res.CRIU.PagesRestored > 4096 {
		t.Fatalf("CRIU restored %d pages itself; a lazy restore leaves the heap to the lazy-pages server", res.CRIU.PagesRestored)
	}
	if got := digest(); got != want {
		t.Fatalf("memory digest after a lazy restore %s, want %s", got, want)
	}
	e.run("checkpoint", "lazy", "--export", filepath.Join(t.TempDir(), "again.tar.zst"), "--leave-running")
	waitHelperGone(t, e)
	if got := digest(); got != want {
		t.Fatalf("memory digest after checkpointing the lazily restored container %s, want %s", got, want)
	}
}
