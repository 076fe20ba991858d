package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// report is the part of `stasis inspect --output json` the tests read.
type report struct {
	Container string `json:"container"`
	Image     string `json:"image"`
	Sizes     struct {
		Memory int64 `json:"memory"`
	} `json:"sizes"`
	Processes []struct {
		Pid     int      `json:"pid"`
		Ppid    int      `json:"ppid"`
		Comm    string   `json:"comm"`
		Cmdline []string `json:"cmdline"`
		Env     []string `json:"env"`
		Files   []struct {
			Fd   string `json:"fd"`
			Path string `json:"path"`
		} `json:"files"`
		Sockets []struct {
			Family string `json:"family"`
			Type   string `json:"type"`
			State  string `json:"state"`
			Src    string `json:"src"`
			Dst    string `json:"dst"`
		} `json:"sockets"`
	} `json:"processes"`
	Matches []struct {
		Pid     int    `json:"pid"`
		Address string `json:"address"`
		Mapping string `json:"mapping"`
		Context string `json:"context"`
	} `json:"memory_matches"`
}

func (e *env) inspect(args ...string) *report {
	e.t.Helper()
	var r report
	out := e.run(append(append([]string{"inspect"}, args...), "--output", "json")...)
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		e.t.Fatalf("inspect JSON: %v\n%s", err, out)
	}
	return &r
}

const forensicsScript = `export APP_MODE=forensic
/sample __sample --warmup 0s --mib 8 --secret-seed e2e --listen-unix /tmp/app.sock &
sleep 1000 | nc -l -p 9000 > /tmp/got &
nc -l -p 8080 < /dev/null > /dev/null &
sleep 0.3
(i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done) | nc 127.0.0.1 9000 &
echo written-after-start > /tmp/new
exec 3< /tmp/new
wait`

// The JSON of inspect names the process tree with argv and environment, a
// listening and an established TCP socket, a unix socket and an open file;
// memory search finds a secret held only in memory; --cat shows the
// container's file and the image's.
func TestInspectNamesEverything(t *testing.T) {
	e := newEnv(t)
	img := e.importSample()
	e.run("run", "--name", "f", img, "sh", "-c", forensicsScript)
	waitLogLine(t, e, "f", "tick 3")
	archive := filepath.Join(t.TempDir(), "f.tar.zst")
	e.run("checkpoint", "f", "--export", archive, "--leave-running", "--tcp-established")

	r := e.inspect(archive, "--ps-tree", "--cmdline", "--env", "--files", "--sockets")
	if r.Container != "f" || r.Image != img {
		t.Fatalf("summary names %q from %q", r.Container, r.Image)
	}
	cmds := map[string]int{}
	var samplePid int
	var envSeen, fileSeen, listenSeen, establishedSeen, unixSeen bool
	for _, p := range r.Processes {
		cmd := strings.Join(p.Cmdline, " ")
		cmds[cmd]++
		if strings.HasPrefix(cmd, "/sample __sample") {
			samplePid = p.Pid
		}
		for _, v := range p.Env {
			envSeen = envSeen || v == "APP_MODE=forensic"
		}
		for _, f := range p.Files {
			fileSeen = fileSeen || (p.Pid == 1 && f.Fd == "3" && f.Path == "/tmp/new")
		}
		for _, s := range p.Sockets {
			listenSeen = listenSeen || (s.State == "LISTEN" && strings.HasSuffix(s.Src, ":8080"))
			establishedSeen = establishedSeen || (s.State == "ESTABLISHED" && strings.HasSuffix(s.Dst, ":9000"))
			unixSeen = unixSeen || (s.Family == "UNIX" && strings.Contains(s.Src, "/tmp/app.sock"))
		}
	}
	for _, want := range []string{"nc -l -p 8080", "nc -l -p 9000", "nc 127.0.0.1 9000", "sleep 1000"} {
		if cmds[want] != 1 {
			t.Errorf("process %q: seen %d times in %v", want, cmds[want], cmds)
		}
	}
	if samplePid == 0 || len(r.Processes) < 6 {
		t.Errorf("process tree incomplete: %v", cmds)
	}
	for what, ok := range map[string]bool{"environment APP_MODE": envSeen, "open file /tmp/new": fileSeen,
		"listening socket :8080": listenSeen, "established socket to :9000": establishedSeen, "unix socket": unixSeen} {
		if !ok {
			t.Errorf("%s not found in %+v", what, r.Processes)
		}
	}

	// The token exists only in the sample's memory: derived from the seed.
	h := sha256.Sum256([]byte("e2e"))
	token := fmt.Sprintf("tok_%x", h[:8])
	m := e.inspect(archive, "--memory", "--pid", strconv.Itoa(samplePid), "--search-regex", `tok_[0-9a-f]{16}`, "--context", "4")
	found := false
	for _, x := range m.Matches {
		if strings.Contains(x.Context, token) && x.Pid == samplePid && x.Mapping != "unmapped" && x.Address != "" {
			found = true
		}
	}
	if !found {
		t.Fatalf("secret %s not found in pid %d's memory: %+v", token, samplePid, m.Matches)
	}

	if got := e.run("inspect", archive, "--cat", "/tmp/new"); strings.TrimSpace(got) != "written-after-start" {
		t.Errorf("--cat /tmp/new: %q", got)
	}
	if got := e.run("inspect", archive, "--cat", "/etc/motd"); strings.TrimSpace(got) != "from the image" {
		t.Errorf("--cat /etc/motd (the image's): %q", got)
	}

	// checkpointctl agrees on pids, commands and open files.
	need(t, "checkpointctl")
	out, err := exec.Command("checkpointctl", "inspect", archive, "--ps-tree", "--files", "--sockets").CombinedOutput()
	if err != nil {
		t.Fatalf("checkpointctl inspect: %v\n%s", err, out)
	}
	procRE := regexp.MustCompile(`\[(\d+)\]\s+(\S+)`)
	fileRE := regexp.MustCompile(`\[(REG|PIPE|INETSK|UNIXSK) (\d+)\]\s+(\S+)`)
	theirs := map[int]string{}
	theirFiles := map[string]bool{}
	pid := 0
	for _, l := range strings.Split(string(out), "\n") {
		if f := fileRE.FindStringSubmatch(l); f != nil {
			theirFiles[fmt.Sprintf("%d/%s %s", pid, f[2], f[3])] = true
		} else if p := procRE.FindStringSubmatch(l); p != nil {
			pid, _ = strconv.Atoi(p[1])
			theirs[pid] = p[2]
		}
	}
	full := e.inspect(archive, "--ps-tree", "--files")
	if len(theirs) != len(full.Processes) {
		t.Errorf("checkpointctl sees %d processes, stasis %d", len(theirs), len(full.Processes))
	}
	for _, p := range full.Processes {
		if theirs[p.Pid] != p.Comm {
			t.Errorf("pid %d: checkpointctl says %q, stasis %q", p.Pid, theirs[p.Pid], p.Comm)
		}
		for _, f := range p.Files {
			regular := strings.HasPrefix(f.Path, "/")
			if _, err := strconv.Atoi(f.Fd); err == nil && regular && !theirFiles[fmt.Sprintf("%d/%s %s", p.Pid, f.Fd, f.Path)] {
				t.Errorf("pid %d fd %s %s: not in checkpointctl's output", p.Pid, f.Fd, f.Path)
			}
		}
	}
}

// diff shows a child started, a file created and memory grown between two
// checkpoints of one container.
func TestDiffOfTwoCheckpoints(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("d", 3)
	a := filepath.Join(t.TempDir(), "a.tar.zst")
	e.run("checkpoint", "d", "--export", a, "--leave-running")
	// The new child holds 2 MB of its own: a sleep alone adds a few pages,
	// which the counter's shell can give back between two checkpoints.
	e.run("exec", "d", "sh", "-c", "echo later > /tmp/later; sleep 4242 > /dev/null 2>&1 & "+
		"(x=$(head -c 2000000 /dev/zero | tr '\\0' a); while :; do sleep 1000; done) > /dev/null 2>&1 &")
	e.waitCounter("d", e.counter("d")+3)
	b := filepath.Join(t.TempDir(), "b.tar.zst")
	e.run("checkpoint", "d", "--export", b, "--leave-running")

	var d struct {
		ProcessesAdded []string `json:"processes_added"`
		RootfsAdded    []string `json:"rootfs_added"`
		Memory         struct {
			Delta int64 `json:"delta"`
		} `json:"memory"`
	}
	out := e.run("diff", a, b, "--output", "json")
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(strings.Join(d.ProcessesAdded, "\n"), "sleep 4242") {
		t.Errorf("new child not in processes_added: %v", d.ProcessesAdded)
	}
	if !strings.Contains(strings.Join(d.RootfsAdded, " "), "/tmp/later") {
		t.Errorf("new file not in rootfs_added: %v", d.RootfsAdded)
	}
	if d.Memory.Delta < 1<<20 {
		t.Errorf("memory did not grow by the child's 2 MB: %+v", d.Memory)
	}
	if text := e.run("diff", a, b); !strings.Contains(text, "+ pid") || !strings.Contains(text, "/tmp/later") {
		t.Errorf("tree output:\n%s", text)
	}
}

// A timeline of three checkpoints, rewound to the first: the counter goes
// on from the first entry's value.
func TestTimelineAndRewind(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("tl", 10)
	ids := strings.Fields(e.run("checkpoint", "tl", "--every", "700ms", "--keep", "3", "--count", "4"))
	if len(ids) != 4 {
		t.Fatalf("timeline printed %v", ids)
	}
	hist := strings.Split(strings.TrimSpace(e.run("history", "tl")), "\n")
	if len(hist) != 4 || strings.Contains(e.run("history", "tl"), ids[0]) {
		t.Fatalf("history keeps the 3 newest, not the first:\n%s", strings.Join(hist, "\n"))
	}
	value := func(id string) int {
		n, err := strconv.Atoi(strings.TrimSpace(e.run("inspect", id, "--cat", "/tmp/last")))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	first, last := value(ids[1]), value(ids[3])
	if first >= last {
		t.Fatalf("timeline values %d .. %d do not grow", first, last)
	}
	e.waitCounter("tl", last+10)
	e.run("rewind", "tl", "--to", "1")
	if now := e.counter("tl"); now < first || now >= last {
		t.Fatalf("after rewind to 1 (count %d) the counter is at %d (latest entry %d)", first, now, last)
	}
	e.waitCounter("tl", first+5)
	if msg := e.fails("rewind", "tl", "--to", "9"); !strings.Contains(msg, "entries 1 to 3") {
		t.Fatalf("rewind beyond the history: %s", msg)
	}
}

// Broken CRIU images, a pid that is not there, a regex that does not
// compile: each a clear error.
func TestInspectBadInput(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("b", 2)
	plain := filepath.Join(t.TempDir(), "b.tar")
	e.run("checkpoint", "b", "--export", plain, "--compress", "none", "--leave-running")

	if msg := e.fails("inspect", plain, "--memory", "--pid", "4242", "--search", "x"); !strings.Contains(msg, "no process with pid 4242") {
		t.Errorf("missing pid: %s", msg)
	}
	if msg := e.fails("inspect", plain, "--memory", "--pid", "1", "--search-regex", "tok_[a-"); !strings.Contains(msg, "does not compile") {
		t.Errorf("bad regex: %s", msg)
	}
	badMagic := mutate(t, plain, func(ms []member) []member {
		for _, m := range ms {
			if m.hdr.Name == "checkpoint/pstree.img" {
				copy(m.data, []byte{0xde, 0xad, 0xbe, 0xef})
			}
		}
		return ms
	})
	if msg := e.fails("inspect", badMagic, "--ps-tree"); !strings.Contains(strings.ToLower(msg), "magic") {
		t.Errorf("wrong magic: %s", msg)
	}
	truncated := mutate(t, plain, func(ms []member) []member {
		for i, m := range ms {
			if strings.HasPrefix(m.hdr.Name, "checkpoint/core-") {
				ms[i].data = m.data[:len(m.data)/2]
			}
		}
		return ms
	})
	if msg := e.fails("inspect", truncated, "--ps-tree"); !strings.Contains(msg, "corrupt or truncated") {
		t.Errorf("truncated image: %s", msg)
	}
	if msg := e.fails("inspect", "/nonexistent/archive.tar"); !strings.Contains(msg, "/nonexistent/archive.tar") {
		t.Errorf("missing archive: %s", msg)
	}
	os.Remove(badMagic)
}

// A timeline of a container whose files do not change stores its rootfs
// diff once, and a rewind still gets it.
func TestTimelineSharesUnchangedRootfs(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "--name", "still", "localhost/busybox:e2e", "sh", "-c", "echo kept > /tmp/kept; exec sleep 1000")
	waitFor(t, func() bool { _, err := e.try("exec", "still", "cat", "/tmp/kept"); return err == nil })
	e.run("checkpoint", "still", "--every", "300ms", "--keep", "5", "--count", "3")
	hist := e.run("history", "still")
	if strings.Count(hist, "same") != 2 {
		t.Fatalf("history should show the rootfs unchanged twice:\n%s", hist)
	}
	pool, _ := filepath.Glob(filepath.Join(e.root, "checkpoints", ".rootfs", "*.tar"))
	if len(pool) != 1 {
		t.Fatalf("want one shared rootfs diff, found %v", pool)
	}
	if fi, err := os.Stat(pool[0]); err != nil || linkCount(fi) != 4 {
		t.Fatalf("the shared diff should be linked by 3 entries (+1): %v %v", fi, err)
	}
	e.run("rewind", "still", "--to", "1")
	if got := strings.TrimSpace(e.run("exec", "still", "cat", "/tmp/kept")); got != "kept" {
		t.Fatalf("after rewind /tmp/kept is %q", got)
	}
}
