package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The whole trip through a real registry, plain and with TLS and basic
// auth: a run image pushed and pulled, a checkpoint image created and
// pushed, everything local removed, and the container restored from the
// registry reference alone, counting on.
func TestRegistryRoundTrip(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "tls-auth"}[secure], func(t *testing.T) {
			reg := startRegistry(t, secure)
			e := newEnv(t)
			e.importBusybox()
			base := reg.addr + "/e2e/busybox:1"
			ckpt := reg.addr + "/e2e/ckpt/web:v1"
			if secure {
				msg := e.fails("push", "localhost/busybox:e2e", base, "--tls-verify=false")
				if !strings.Contains(msg, "credentials") {
					t.Fatalf("push without credentials: %s", msg)
				}
				msg = e.fails("push", "localhost/busybox:e2e", base, "--tls-verify=false", "--creds", regUser+":wrong")
				if !strings.Contains(msg, "credentials") {
					t.Fatalf("push with a wrong password: %s", msg)
				}
			}
			e.run(append([]string{"push", "localhost/busybox:e2e", base}, reg.flags()...)...)
			e.run("rmi", "localhost/busybox:e2e")
			e.run(append([]string{"pull", base}, reg.flags()...)...)

			e.run("run", "--name", "web", base, "sh", "-c", counterScript)
			e.waitCounter("web", 10)
			e.run(append([]string{"checkpoint", "web", "--create-image", ckpt, "--push"}, reg.flags()...)...)
			at := e.logCounts("web")
			if images := e.run("images"); !strings.Contains(images, "web (image "+base+")") {
				t.Fatalf("stasis images does not say what the checkpoint image is:\n%s", images)
			}
			if list := e.run("checkpoints"); !strings.Contains(list, ckpt) {
				t.Fatalf("stasis checkpoints does not list the checkpoint image:\n%s", list)
			}
			if got := e.run("inspect", ckpt, "--cat", "/tmp/last"); strings.TrimSpace(got) == "" {
				t.Fatal("inspect of a checkpoint image shows no /tmp/last")
			}
			e.run("rm", "web")
			e.run("rmi", ckpt, base)
			if left := strings.TrimSpace(e.run("images")); strings.Count(left, "\n") != 0 {
				t.Fatalf("images left after rmi:\n%s", left)
			}

			e.run(append([]string{"restore", ckpt, "--name", "web2"}, reg.flags()...)...)
			e.assertContinues("web2", at[len(at)-1])
			if first := e.logCounts("web2")[0]; first <= at[len(at)-1] {
				t.Fatalf("restored from the registry, first count %d, want > %d", first, at[len(at)-1])
			}
			// Pulling again fetches nothing new and changes nothing.
			before := storeFiles(t, e)
			e.run(append([]string{"pull", ckpt}, reg.flags()...)...)
			if after := storeFiles(t, e); after != before {
				t.Fatalf("a repeated pull changed the store:\n%s\nvs\n%s", before, after)
			}
		})
	}
}

// Every family's annotations are on the pushed manifest, under the keys
// checkpointctl's lib (containerd), Podman and CRI-O read.
func TestCheckpointImageAnnotations(t *testing.T) {
	reg := startRegistry(t, false)
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("ann", 2)
	ref := reg.addr + "/e2e/ann:1"
	e.run(append([]string{"checkpoint", "ann", "--create-image", ref, "--push", "--leave-running"}, reg.flags()...)...)
	img := remoteImage(t, ref)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		metadata.CheckpointAnnotationName:                  "ann",
		metadata.CheckpointAnnotationEngine:                "stasis",
		metadata.CheckpointAnnotationRootfsImageName:       "localhost/busybox:e2e",
		metadata.CheckpointAnnotationRuntimeName:           "runc",
		"io.kubernetes.cri-o.annotations.checkpoint.name":  "ann",
		"io.podman.annotations.checkpoint.name":            "ann",
		"io.podman.annotations.checkpoint.rootfsImageName": "localhost/busybox:e2e",
	}
	for k, v := range want {
		if m.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, m.Annotations[k], v)
		}
	}
	for _, k := range []string{metadata.CheckpointAnnotationCriuVersion, metadata.CheckpointAnnotationEngineVersion,
		metadata.CheckpointAnnotationRootfsImageSha, metadata.CheckpointAnnotationHostArch,
		metadata.CheckpointAnnotationHostKernel, metadata.CheckpointAnnotationCgroupVersion,
		metadata.CheckpointAnnotationRootfsImageID} {
		if m.Annotations[k] == "" {
			t.Errorf("annotation %s missing", k)
		}
	}
	if len(m.Layers) != 1 || !strings.HasSuffix(string(m.Layers[0].MediaType), "+zstd") {
		t.Fatalf("want one zstd layer (the archive itself), got %+v", m.Layers)
	}
	// containerd and checkpointctl read them on the index too.
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.Annotations[metadata.CheckpointAnnotationName] != "ann" || len(im.Manifests) != 1 ||
		im.Manifests[0].Annotations[metadata.CheckpointAnnotationName] != "ann" {
		t.Fatalf("index lacks the checkpoint annotations: %+v", im)
	}
}

// A registry that fails, a digest that does not match, an image that is
// not a checkpoint, a base image nowhere to be found: each is a clear error
// and the store is as it was.
func TestRegistryBadInput(t *testing.T) {
	reg := startRegistry(t, false)
	proxy := startFaultyProxy(t, reg)
	e := newEnv(t)
	e.importBusybox()
	// A checkpoint image whose base image was local only, and is gone.
	e.run("image", "import", busyboxTar(t), "localhost/gone:1")
	e.run("run", "--name", "gone", "localhost/gone:1", "sh", "-c", counterScript)
	e.waitCounter("gone", 2)
	orphan := reg.addr + "/e2e/orphan:1"
	e.run("checkpoint", "gone", "--create-image", orphan, "--push", "--tls-verify=false")
	if msg := e.fails("rmi", "localhost/gone:1"); !strings.Contains(msg, "used by container gone") {
		t.Fatalf("rmi of an image in use: %s", msg)
	}
	e.run("rm", "gone")
	e.run("rmi", orphan, "localhost/gone:1")
	e.runCounter("src", 2)
	e.run("push", "localhost/busybox:e2e", reg.addr+"/e2e/busybox:1", "--tls-verify=false")
	through := proxy.addr + "/e2e/busybox:1"

	before := storeFiles(t, e)
	check := func(what, want string, args ...string) {
		t.Helper()
		msg := e.fails(append(args, "--tls-verify=false")...)
		if !strings.Contains(msg, want) {
			t.Errorf("%s: error lacks %q:\n%s", what, want, msg)
		}
		if after := storeFiles(t, e); after != before {
			t.Errorf("%s changed the store:\n%s\nvs\n%s", what, before, after)
		}
	}
	check("missing tag", "not found", "pull", reg.addr+"/e2e/nothing:1")
	for mode, want := range map[string]string{
		"500":     "500",
		"cut":     "unexpected EOF",
		"corrupt": "sha256",
	} {
		proxy.mode.Store(mode)
		check("registry "+mode, want, "pull", through)
	}
	proxy.mode.Store("")
	check("not a checkpoint", "not a checkpoint", "restore", through, "--name", "x")
	check("missing base image", "not in the store", "restore", orphan, "--name", "y")
	if msg := e.fails("run", "--name", "z", "localhost/busybox:e2e-nope", "true"); !strings.Contains(msg, "not found") {
		t.Errorf("run of a missing image: %s", msg)
	}
	if s := e.status("src"); s != "running" {
		t.Fatalf("source container is %q", s)
	}
}

// Podman 4.3 restores a stasis checkpoint image pulled from the registry,
// and a Podman archive made into a checkpoint image restores in stasis.
func TestCheckpointImagesWithPodman(t *testing.T) {
	need(t, "podman")
	reg := startRegistry(t, false)
	e := newEnv(t)
	e.importBusybox()
	base := reg.addr + "/e2e/busybox:1"
	e.run("push", "localhost/busybox:e2e", base, "--tls-verify=false")
	e.run("pull", base, "--tls-verify=false")

	e.run("run", "--name", "to-podman", base, "sh", "-c", counterScript)
	at := e.waitCounter("to-podman", 10)
	ckpt := reg.addr + fmt.Sprintf("/e2e/ckpt/to-podman:%d", os.Getpid())
	e.run("checkpoint", "to-podman", "--create-image", ckpt, "--push", "--tls-verify=false")
	t.Cleanup(func() {
		exec.Command("podman", "rm", "-f", "to-podman").Run()
		exec.Command("podman", "rmi", "-f", ckpt, base).Run()
	})
	podman(t, "pull", "--tls-verify=false", base)
	podman(t, "pull", "--tls-verify=false", ckpt)
	podman(t, "container", "restore", ckpt)
	if n := podmanCounter(t, "to-podman"); n < at {
		t.Fatalf("Podman restored the counter at %d, below the checkpointed %d", n, at)
	}

	// The other way: Podman's archive, made an image by stasis.
	archive := filepath.Join(t.TempDir(), "podman.tar.zst")
	at = podmanCounter(t, "to-podman")
	podman(t, "container", "checkpoint", "--export", archive, "to-podman")
	img := "localhost/from-podman-ckpt:1"
	e.run("image", "build", archive, img)
	e.run("restore", img, "--name", "from-podman")
	e.assertContinues("from-podman", at)
}
