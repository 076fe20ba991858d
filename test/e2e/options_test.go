package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// With --network host the container sees the host's interfaces, and it
// checkpoints and restores there like any other.
func TestHostNetworkCheckpointRestore(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "--name", "hostnet", "--network", "host", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("hostnet", 10)
	// In its own network namespace a container has only lo.
	ifaces := strings.Fields(e.run("exec", "hostnet", "ls", "/sys/class/net"))
	hostIfaces, err := os.ReadDir("/sys/class/net")
	if err != nil {
		t.Fatal(err)
	}
	if len(ifaces) != len(hostIfaces) {
		t.Fatalf("the container sees interfaces %v, the host has %d", ifaces, len(hostIfaces))
	}
	e.run("checkpoint", "hostnet")
	at := e.logCounts("hostnet")
	e.run("restore", "hostnet")
	e.assertContinues("hostnet", at[len(at)-1])
}

// An established TCP connection (loopback, inside the container's own
// network namespace) is refused without --tcp-established and survives
// checkpoint and restore with it: the stream goes on with no gap.
func TestTCPEstablished(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	// The listener's stdin never ends, or it would close the connection.
	script := `sleep 1000 | nc -l -p 9000 > /tmp/got & sleep 0.3;
i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done | nc 127.0.0.1 9000 & wait`
	e.run("run", "--name", "tcp", "localhost/busybox:e2e", "sh", "-c", script)
	received := func() []int {
		var ns []int
		for _, l := range strings.Fields(e.run("exec", "tcp", "cat", "/tmp/got")) {
			n, err := strconv.Atoi(l)
			if err != nil {
				t.Fatalf("stream garbled: %q", l)
			}
			ns = append(ns, n)
		}
		return ns
	}
	waitFor(t, func() bool { return len(received()) >= 10 })

	if msg := e.fails("checkpoint", "tcp"); !strings.Contains(msg, "--tcp-established") {
		t.Fatalf("checkpoint of an open TCP connection without --tcp-established: %s", msg)
	}
	if s := e.status("tcp"); s != "running" {
		t.Fatalf("after the refused checkpoint the container is %q", s)
	}
	// Dumping any TCP socket needs the CRIU patch in hack/criu-patches on
	// kernels that refuse SO_PASSCRED/SO_PASSSEC on TCP sockets.
	before := len(received())
	e.run("checkpoint", "tcp", "--tcp-established")
	e.run("restore", "tcp", "--tcp-established")
	waitFor(t, func() bool { return len(received()) >= before+10 })
	for i, n := range received() {
		if n != i {
			t.Fatalf("the stream has a gap or repeat at %d: got %d", i, n)
		}
	}
}

// A held flock is refused without --file-locks and is still held after a
// restore with it.
func TestFileLocks(t *testing.T) {
	e := newEnv(t)
	e.importSample()
	e.run("run", "--name", "lock", "localhost/sample:e2e", "/sample", "__sample", "--warmup", "0s", "--mib", "1", "--lock", "/tmp/lock")
	waitLogLine(t, e, "lock", "tick 10")
	// /proc/locks, read inside the container's pid namespace, lists the
	// container's locks: the inode of /tmp/lock must hold an exclusive flock.
	held := func() bool {
		ino := strings.TrimSpace(e.run("exec", "lock", "stat", "-c", "%i", "/tmp/lock"))
		for _, l := range strings.Split(e.run("exec", "lock", "cat", "/proc/locks"), "\n") {
			f := strings.Fields(l)
			if len(f) >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && strings.HasSuffix(f[5], ":"+ino) {
				return true
			}
		}
		return false
	}
	if !held() {
		t.Fatal("the lock is not held before the checkpoint")
	}
	if msg := e.fails("checkpoint", "lock"); !strings.Contains(msg, "file-locks") {
		t.Fatalf("checkpoint of a held lock without --file-locks: %s", msg)
	}
	e.run("checkpoint", "lock", "--file-locks")
	n := lastTick(t, e, "lock")
	e.run("restore", "lock", "--file-locks")
	waitLogLine(t, e, "lock", "tick "+strconv.Itoa(n+3))
	if !held() {
		t.Fatal("the lock is not held after the restore")
	}
}

// Images saved by another tool in each format stasis imports run.
func TestImportImageFormats(t *testing.T) {
	need(t, "podman")
	e := newEnv(t)
	name := sharedImage(t, e)
	dir := t.TempDir()
	for _, f := range []struct{ format, path string }{
		{"oci-archive", filepath.Join(dir, "img.oci.tar")},
		{"docker-archive", filepath.Join(dir, "img.docker.tar")},
		{"oci-dir", filepath.Join(dir, "layout")},
	} {
		t.Run(f.format, func(t *testing.T) {
			podman(t, "save", "--format", f.format, "-o", f.path, name)
			ref := "localhost/imported-" + f.format + ":1"
			e.run("image", "import", f.path, ref)
			if !strings.Contains(e.run("images"), "imported-"+f.format) {
				t.Fatalf("%s not listed after import", ref)
			}
			ctr := "from-" + f.format
			e.run("run", "--name", ctr, ref, "sh", "-c", counterScript)
			e.waitCounter(ctr, 2)
			e.run("rm", "-f", ctr)
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A container labelled stasis.dev/checkpoint=never is never checkpointed,
// one labelled stasis.dev/migrate=never never leaves the node; the refusal
// says why, the container keeps running, and the opt-out survives a
// restore.
func TestOptOutLabels(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "--name", "secret", "--label", "stasis.dev/checkpoint=never", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("secret", 3)
	if msg := e.fails("checkpoint", "secret", "--leave-running"); !strings.Contains(msg, "stasis.dev/checkpoint=never") {
		t.Fatalf("opted-out checkpoint: %s", msg)
	}
	if s := e.status("secret"); s != "running" {
		t.Fatalf("opted-out container is %q after the refusal", s)
	}

	e.run("run", "--name", "local", "--label", "stasis.dev/migrate=never", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("local", 10)
	if msg := e.fails("checkpoint", "local", "--export", filepath.Join(t.TempDir(), "x.tar.zst")); !strings.Contains(msg, "stasis.dev/migrate=never") {
		t.Fatalf("export of a migrate=never container: %s", msg)
	}
	e.run("checkpoint", "local")
	at := e.logCounts("local")
	e.run("restore", "local")
	e.assertContinues("local", at[len(at)-1])
	if msg := e.fails("checkpoint", "local", "--create-image", "localhost/local-ckpt:1"); !strings.Contains(msg, "stasis.dev/migrate=never") {
		t.Fatalf("after a restore the opt-out is gone: %s", msg)
	}
}
