package kubenode

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Images the node has without a registry.
const (
	PauseImage   = "registry.k8s.io/pause:3.10.1"
	BusyboxImage = "localhost/busybox:e2e"
)

// BusyboxRootfs is a rootfs tar of Debian's busybox-static with its applets.
func BusyboxRootfs() ([]byte, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox-static is needed: %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"bin/busybox": bb,
		"etc/passwd": []byte("root:x:0:0:root:/root:/bin/sh\n"), "etc/group": []byte("root:x:0:\n")}
	var links []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			links = append(links, "bin/"+a)
		}
	}
	return rootfsTar([]string{"bin/", "etc/", "proc/", "sys/", "dev/", "tmp/", "root/"}, files, links, "busybox")
}

func rootfsTar(dirs []string, files map[string][]byte, links []string, target string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: mode}); err != nil {
			return nil, err
		}
	}
	for n, b := range files {
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b))}); err != nil {
			return nil, err
		}
		tw.Write(b)
	}
	for _, l := range links {
		if err := tw.WriteHeader(&tar.Header{Name: l, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), tw.Close()
}

// imageTarball writes a one-layer image as a docker archive ctr imports.
func imageTarball(dest, ref string, rootfs []byte, entrypoint []string) error {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(rootfs)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64",
		RootFS: v1.RootFS{Type: "layers", DiffIDs: mustDiffIDs(img)},
		Config: v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/bin"}}})
	if err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(dest, tag, img)
}

func mustDiffIDs(img v1.Image) []v1.Hash {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil
	}
	return cf.RootFS.DiffIDs
}

// nodeImage is an image every node has without a registry.
type nodeImage struct {
	ref    string
	rootfs []byte
	entry  []string
}

// nodeImages are the sandbox's pause image and busybox; dir is where the
// pause program is built.
func nodeImages(dir string) ([]nodeImage, error) {
	pause, err := buildPause(dir)
	if err != nil {
		return nil, err
	}
	pauseFS, err := rootfsTar(nil, map[string][]byte{"pause": pause}, nil, "")
	if err != nil {
		return nil, err
	}
	bb, err := BusyboxRootfs()
	if err != nil {
		return nil, err
	}
	return []nodeImage{{PauseImage, pauseFS, []string{"/pause"}}, {BusyboxImage, bb, []string{"/bin/sh"}}}, nil
}

// buildPause compiles the sandbox's pause program, static.
func buildPause(dir string) ([]byte, error) {
	out := filepath.Join(dir, "pause")
	cmd := exec.Command("go", "build", "-o", out, "github.com/stasis-dev/stasis/test/kubenode/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %v: %s", err, b)
	}
	return os.ReadFile(out)
}

// ImportRootfs imports a rootfs tar as a one-layer image ref with the
// given entrypoint into the node's containerd.
func (n *Node) ImportRootfs(ref, rootfsTar string, entrypoint []string) error {
	return n.w.importRootfs(ref, rootfsTar, entrypoint)
}

func (w *worker) importRootfs(ref, rootfsTar string, entrypoint []string) error {
	b, err := os.ReadFile(rootfsTar)
	if err != nil {
		return err
	}
	tb := w.path("import.tar")
	defer os.Remove(tb)
	if err := imageTarball(tb, ref, b, entrypoint); err != nil {
		return err
	}
	return w.importImage(tb)
}
