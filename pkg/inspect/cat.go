package inspect

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// Cat writes a file as the container saw it at checkpoint time: the
// container's own version from the rootfs diff, else the base image's
// (baseRootfs, the unpacked image). Files the container deleted, and
// paths that leave the root, are errors.
func (c *Checkpoint) Cat(w io.Writer, name, baseRootfs string) error {
	clean, err := untar.CleanName(strings.TrimPrefix(name, "/"))
	if err != nil || clean == "" {
		return fmt.Errorf("--cat %q: not a path inside the container", name)
	}
	deleted, err := c.dir.Deleted()
	if err != nil {
		return err
	}
	for _, d := range deleted {
		d = strings.TrimPrefix(path.Clean("/"+d), "/")
		if clean == d || strings.HasPrefix(clean, d+"/") {
			return fmt.Errorf("/%s was deleted in the container before the checkpoint", clean)
		}
	}
	found, err := c.catFromDiff(w, clean)
	if found || err != nil {
		return err
	}
	if baseRootfs == "" {
		return fmt.Errorf("/%s is not among the container's changes, and the base image %q is not in the store to read it from", clean, c.cfg.ImageName())
	}
	p, err := securejoin.SecureJoin(baseRootfs, clean)
	if err != nil {
		return err
	}
	// O_NONBLOCK: a FIFO in the image is refused below, not waited on.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("/%s exists neither in the container's changes nor in its image", clean)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("/%s is not a regular file (%v)", clean, fi.Mode().Type())
	}
	if err := syscall.SetNonblock(int(f.Fd()), false); err != nil {
		return err
	}
	_, err = io.Copy(w, f)
	return err
}

func (c *Checkpoint) catFromDiff(w io.Writer, clean string) (bool, error) {
	f, err := c.dir.OpenMember(archive.RootfsDiff)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		n, err := untar.CleanName(h.Name)
		if err != nil || n != clean {
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg:
			_, err = io.Copy(w, tr)
			return true, err
		case tar.TypeSymlink:
			return true, fmt.Errorf("/%s is a symbolic link to %s", clean, h.Linkname)
		case tar.TypeDir:
			return true, fmt.Errorf("/%s is a directory", clean)
		}
		return true, fmt.Errorf("/%s is not a regular file", clean)
	}
}
