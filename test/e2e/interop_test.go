package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
)

func need(t *testing.T, bin string) string {
	t.Helper()
	requireRoot(t)
	p, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("%s is needed (hack/test.sh installs it): %v", bin, err)
	}
	return p
}

func podman(t *testing.T, args ...string) string {
	t.Helper()
	// runc, as stasis uses: Podman picks crun when it is installed, and
	// Debian's crun refuses this host's hybrid cgroups.
	cmd := exec.Command("podman", append([]string{"--runtime", "runc"}, args...)...)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// The same rootfs imported into both tools under the same name.
func sharedImage(t *testing.T, e *env) string {
	name := fmt.Sprintf("localhost/busybox-interop:%d", os.Getpid())
	tarball := busyboxTar(t)
	e.run("image", "import", tarball, name)
	podman(t, "import", tarball, name)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", name).Run() })
	return name
}

func podmanCounter(t *testing.T, name string) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, err := exec.Command("podman", "exec", name, "cat", "/tmp/last").Output()
		if err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
				return n
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("podman container %s has no counter", name)
	return 0
}

func TestPodmanArchiveRestoresInStasis(t *testing.T) {
	need(t, "podman")
	e := newEnv(t)
	img := sharedImage(t, e)
	name := fmt.Sprintf("pm-src-%d", os.Getpid())
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", name).Run() })
	podman(t, "run", "-d", "--name", name, "--network", "none", "--ulimit", "nofile=1024:1024",
		"--ulimit", "nproc=1024:1024", img, "sh", "-c", counterScript)
	for podmanCounter(t, name) < 10 {
		time.Sleep(100 * time.Millisecond)
	}
	archive := filepath.Join(t.TempDir(), "podman.tar.zst")
	podman(t, "container", "checkpoint", "--export", archive, name)
	// inspect reads Podman's archives too.
	if tree := e.run("inspect", archive, "--ps-tree", "--cmdline"); !strings.Contains(tree, "sh -c") {
		t.Errorf("inspect of a Podman archive:\n%s", tree)
	}
	at := 10
	e.run("restore", "--import", archive, "--name", "from-podman")
	e.assertContinues("from-podman", at)
	if first := e.logCounts("from-podman"); len(first) > 0 && first[0] < at {
		t.Fatalf("restored Podman container started over at %d", first[0])
	}
}

func TestStasisArchiveRestoresInPodman(t *testing.T) {
	need(t, "podman")
	e := newEnv(t)
	img := sharedImage(t, e)
	e.run("run", "--name", "to-podman", img, "sh", "-c", counterScript)
	at := e.waitCounter("to-podman", 10)
	archive := filepath.Join(t.TempDir(), "stasis.tar.zst")
	e.run("checkpoint", "to-podman", "--export", archive)
	name := fmt.Sprintf("pm-dst-%d", os.Getpid())
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", name).Run() })
	podman(t, "container", "restore", "--import", archive, "--name", name)
	if n := podmanCounter(t, name); n < at {
		t.Fatalf("Podman restored the counter at %d, below the checkpointed %d", n, at)
	}
}

func TestCheckpointctlReadsStasisArchives(t *testing.T) {
	need(t, "checkpointctl")
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("shown", 2)
	for _, comp := range []string{"zstd", "gzip", "none"} {
		archive := filepath.Join(t.TempDir(), "a.tar")
		e.run("checkpoint", "shown", "--export", archive, "--compress", comp, "--leave-running")
		out, err := exec.Command("checkpointctl", "show", archive).CombinedOutput()
		if err != nil {
			t.Fatalf("checkpointctl show (%s): %v\n%s", comp, err, out)
		}
		for _, want := range []string{"shown", "localhost/busybox:e2e", "runc"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("checkpointctl show (%s) lacks %q:\n%s", comp, want, out)
			}
		}
		out, err = exec.Command("checkpointctl", "inspect", archive).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Checkpointed:") {
			t.Errorf("checkpointctl inspect (%s): %v\n%s", comp, err, out)
		}
	}
	// The engine is named in spec.dump with checkpointctl's own annotation
	// key (checkpointctl 1.6 itself prints only Podman, CRI-O or containerd).
	dir := t.TempDir()
	archive := filepath.Join(t.TempDir(), "b.tar")
	e.run("checkpoint", "shown", "--export", archive, "--compress", "none", "--leave-running")
	if out, err := exec.Command("tar", "-C", dir, "-xf", archive, "spec.dump").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	spec, _, err := metadata.ReadContainerCheckpointSpecDump(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Annotations[metadata.CheckpointAnnotationEngine]; got != "stasis" {
		t.Fatalf("engine annotation %q", got)
	}
}
