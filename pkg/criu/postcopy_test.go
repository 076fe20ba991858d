package criu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Post-copy, the building block of live migration, with the CRIU that
// hack/deps.sh builds and the runc this machine has, without
// CAP_SYS_RESOURCE: `runc checkpoint --lazy-pages` dumps all but the
// memory and serves the pages from the frozen source, `criu lazy-pages`
// fetches them for `runc restore --lazy-pages`, and the restored counter
// goes on from the source's next value. Unpatched, CRIU 4.1.1's page
// server fails its first request here (hack/criu-patches/0002).
func TestPostCopyFromAFrozenContainer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (runc, CRIU)")
	}
	for _, bin := range []string{"runc", "criu", "/bin/busybox"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is needed (hack/deps.sh installs it): %v", bin, err)
		}
	}
	dir := t.TempDir()
	root, bundle := filepath.Join(dir, "runc"), postCopyBundle(t, filepath.Join(dir, "bundle"))
	images, work, restoreWork := filepath.Join(dir, "images"), filepath.Join(dir, "work"), filepath.Join(dir, "restore-work")
	for _, d := range []string{images, work, restoreWork} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	runc := func(args ...string) *exec.Cmd {
		return exec.Command("runc", append([]string{"--root", root}, args...)...)
	}
	t.Cleanup(func() {
		for _, id := range []string{"source", "copy"} {
			runc("delete", "-f", id).Run()
		}
		unmountUnder(dir) // what a CRIU killed half way left mounted
	})

	// The source's stdout is a pipe (a file of the host would be an
	// external CRIU cannot dump), read here.
	srcOut := startDetached(t, runc("run", "-b", bundle, "-d", "source"))
	waitLine(t, srcOut, "count 5")

	port := freePort(t)
	status, ready, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ck := runc("checkpoint", "--lazy-pages", "--page-server", "127.0.0.1:"+port, "--status-fd", "3",
		"--image-path", images, "--work-path", work, "source")
	ck.ExtraFiles = []*os.File{ready}
	ckOut, _ := os.Create(filepath.Join(dir, "checkpoint.log"))
	ck.Stdout, ck.Stderr = ckOut, ckOut
	if err := ck.Start(); err != nil {
		t.Fatal(err)
	}
	ready.Close()
	ckDone := make(chan error, 1)
	go func() { ckDone <- ck.Wait() }()
	// CRIU writes a byte once all but the memory is dumped and its page
	// server listens.
	if _, err := status.Read(make([]byte, 1)); err != nil {
		<-ckDone
		t.Fatalf("lazy dump never ready: %v\n%s", err, tailOf(filepath.Join(dir, "checkpoint.log"), filepath.Join(work, "dump.log")))
	}
	last := lastCount(t, srcOut)

	lazy := exec.Command("criu", "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port,
		"-D", images, "-W", restoreWork, "-o", "lazy-pages.log")
	if err := lazy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lazy.Process.Kill() })
	lazyDone := make(chan error, 1)
	go func() { lazyDone <- lazy.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(restoreWork, "lazy-pages.socket")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("criu lazy-pages never listened")
		}
	}
	copyOut := startDetached(t, runc("restore", "--lazy-pages", "-b", bundle, "--image-path", images,
		"--work-path", restoreWork, "-d", "copy"), filepath.Join(work, "dump.log"), filepath.Join(restoreWork, "lazy-pages.log"))
	for _, c := range []struct {
		name string
		done chan error
		log  string
	}{{"runc checkpoint", ckDone, filepath.Join(work, "dump.log")}, {"criu lazy-pages", lazyDone, filepath.Join(restoreWork, "lazy-pages.log")}} {
		select {
		case err := <-c.done:
			if err != nil {
				t.Fatalf("%s: %v\n%s", c.name, err, tailOf(c.log))
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s did not end once the pages were served\n%s", c.name, tailOf(c.log))
		}
	}
	first := nextCount(t, copyOut)
	if first != last+1 {
		t.Fatalf("the source counted to %d, the copy went on from %d", last, first)
	}
	if err := runc("state", "source").Run(); err == nil {
		t.Error("the source still exists once all its pages were served")
	}
}

// postCopyBundle writes a busybox counter's OCI bundle.
func postCopyBundle(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "rootfs", "bin")
	for _, d := range []string{bin, filepath.Join(dir, "rootfs", "proc"), filepath.Join(dir, "rootfs", "dev"),
		filepath.Join(dir, "rootfs", "sys"), filepath.Join(dir, "rootfs", "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"sh", "sleep", "echo"} {
		os.Symlink("busybox", filepath.Join(bin, c))
	}
	if out, err := exec.Command("runc", "spec", "-b", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"sh", "-c", `i=0; while true; do echo "count $i"; i=$((i+1)); sleep 0.1; done`}
	spec["root"].(map[string]any)["readonly"] = false
	if b, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startDetached starts a detached runc run or restore with stdin from
// /dev/null and stdout a pipe, and returns the lines the container writes;
// logs are shown if it fails.
func startDetached(t *testing.T, cmd *exec.Cmd, logs ...string) <-chan string {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		// A restore whose lazy pages never come waits for them; its
		// CRIU goes with it.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = fmt.Errorf("no answer in a minute: %w", <-done)
	}
	w.Close()
	if err != nil {
		r.SetReadDeadline(time.Now().Add(time.Second))
		b, _ := io.ReadAll(r)
		t.Fatalf("%s: %v: %s\n%s", strings.Join(cmd.Args, " "), err, b, tailOf(logs...))
	}
	lines := make(chan string, 1000)
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return lines
}

func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("output ended before %q", want)
			}
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("no %q", want)
		}
	}
}

// lastCount drains the frozen source's lines: the last is where it was
// checkpointed.
func lastCount(t *testing.T, lines <-chan string) int {
	t.Helper()
	last := -1
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return last
			}
			if n, err := strconv.Atoi(strings.TrimPrefix(l, "count ")); err == nil {
				last = n
			}
		case <-time.After(500 * time.Millisecond):
			if last < 0 {
				t.Fatal("the source logged no count")
			}
			return last
		}
	}
}

func nextCount(t *testing.T, lines <-chan string) int {
	t.Helper()
	select {
	case l := <-lines:
		n, err := strconv.Atoi(strings.TrimPrefix(l, "count "))
		if err != nil {
			t.Fatalf("the copy wrote %q", l)
		}
		return n
	case <-time.After(30 * time.Second):
		t.Fatal("the copy wrote nothing")
	}
	return 0
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// tailOf is the last lines of each file, for a failure's message.
func tailOf(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		data, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		fmt.Fprintf(&b, "--- %s\n%s\n", p, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var under []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			under = append(under, f[1])
		}
	}
	for i := len(under) - 1; i >= 0; i-- {
		syscall.Unmount(under[i], syscall.MNT_DETACH)
	}
}
