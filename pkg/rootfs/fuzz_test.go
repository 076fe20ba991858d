package rootfs

// FuzzApply: a restore applies a rootfs diff and a deletion list from the
// checkpoint, both hostile, to the container's mounted root. Into
// <tmp>/root, which already holds a base image's files and symlinks that
// lead out of it (../outside, /, and the absolute path of <tmp>/outside),
// beside <tmp>/outside with a sentinel file: whatever the input, nothing
// outside root changes, root stays a directory with no device node in
// it, a deletion list ValidateDeleted refuses changes nothing at all, a
// successful Apply leaves none of the deleted paths, and the worst is an
// error, never a panic or a hang.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/klauspost/compress/zstd"

	"github.com/stasis-dev/stasis/pkg/untar"

	"github.com/stasis-dev/stasis/internal/treesnap"
)

// diffTar writes entries "T name [target]" (T a tar typeflag; a regular
// file's body is its name).
func diffTar(entries ...string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		f := strings.SplitN(e, " ", 3)
		h := &tar.Header{Typeflag: f[0][0], Name: f[1], Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		if len(f) == 3 {
			h.Linkname = f[2]
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Name))
		}
		if tw.WriteHeader(h) == nil && h.Size > 0 {
			tw.Write([]byte(h.Name))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zstded(b []byte) []byte {
	enc, _ := zstd.NewWriter(nil)
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

func FuzzApply(f *testing.F) {
	normal := diffTar("5 etc/", "0 etc/app.conf", "2 etc/link app.conf", "6 run/fifo", "1 etc/hard etc/app.conf")
	for _, s := range []struct {
		diff    []byte
		deleted string
	}{
		{nil, ""},
		{normal, "/etc/hosts\n/var/log"},
		{gzipped(normal), "/usr/bin/app"},
		{zstded(normal), "/etc"},
		{diffTar("0 out/evil", "0 up/evil", "0 abs/evil"), ""},
		{diffTar("0 out/.wh.sentinel", "3 out/sentinel", "0 out/.wh..wh..opq"), ""},
		{diffTar("1 h out/sentinel", "1 h2 up/sentinel", "1 h3 ../outside/sentinel"), ""},
		{diffTar("5 out/", "0 out/sentinel"), "/out"},
		{diffTar("2 l ../outside", "0 l/evil"), ""},
		{diffTar("2 l /", "0 l/etc/passwd", "4 l/dev/sda"), ""},
		{diffTar("6 run/fifo"), "/run/fifo/x"}, // os.RemoveAll opened the FIFO and waited
		{nil, "/out/sentinel\n/up/sentinel\n/abs/etc/passwd\nout/."},
		{nil, "/"},
		{nil, "/etc/../../outside/sentinel"},
		{nil, "../outside"},
		{nil, "/etc/\x00passwd"},
		{nil, "//"},
		{[]byte("\x1f\x8b garbage"), ""},
		{[]byte("\x28\xb5\x2f\xfd garbage"), ""},
	} {
		f.Add(s.diff, s.deleted)
	}
	f.Fuzz(func(t *testing.T, diff []byte, deletedList string) {
		var deleted []string
		if deletedList != "" {
			deleted = strings.Split(deletedList, "\n")
		}
		tmp := t.TempDir()
		root, outside := filepath.Join(tmp, "root"), filepath.Join(tmp, "outside")
		for _, d := range []string{outside, filepath.Join(root, "etc"), filepath.Join(root, "usr/bin"), filepath.Join(root, "var/log")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for p, b := range map[string]string{"outside/sentinel": "sentinel", "root/etc/passwd": "root:x:0:0::/root:/bin/sh\n", "root/etc/hosts": "127.0.0.1 localhost\n", "root/usr/bin/app": "#!/bin/sh\n"} {
			if err := os.WriteFile(filepath.Join(tmp, p), []byte(b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for name, target := range map[string]string{"up": "../outside", "abs": "/", "out": outside} {
			if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
		}
		before, rootBefore := treesnap.MustTake(t, tmp, root), treesnap.MustTake(t, root, "")
		var r io.Reader
		if len(diff) > 0 {
			r = bytes.NewReader(diff)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		defer treesnap.Watchdog(30 * time.Second)()
		err := Apply(ctx, root, r, deleted, 1<<20)
		if ctx.Err() != nil {
			t.Fatalf("Apply ran past its deadline: %v", err)
		}
		if d := treesnap.MustTake(t, tmp, root).Diff(before); d != "" {
			t.Errorf("outside the root (apply: %v):\n%s", err, d)
		}
		if fi, lerr := os.Lstat(root); lerr != nil || !fi.IsDir() {
			t.Fatalf("root is gone or no directory: %v (apply: %v)", lerr, err)
		}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, werr error) error {
			if werr == nil && d.Type()&(fs.ModeDevice|fs.ModeCharDevice) != 0 {
				t.Errorf("%s is a device node", p)
			}
			return nil
		})
		if verr := ValidateDeleted(deleted); verr != nil {
			if err == nil || !errors.Is(err, untar.ErrUnsafePath) {
				t.Errorf("ValidateDeleted refuses the list (%v), Apply says %v", verr, err)
			}
			if d := treesnap.MustTake(t, root, "").Diff(rootBefore); d != "" {
				t.Errorf("a refused deletion list changed the root:\n%s", d)
			}
			return
		}
		if err != nil {
			return
		}
		for _, d := range deleted {
			c, _ := untar.CleanName(strings.TrimPrefix(d, "/"))
			parent, jerr := securejoin.SecureJoin(root, path.Dir(c))
			if jerr != nil {
				continue
			}
			if _, lerr := os.Lstat(filepath.Join(parent, path.Base(c))); !errors.Is(lerr, fs.ErrNotExist) && !errors.Is(lerr, syscall.ENOTDIR) {
				t.Errorf("deleted %s is still there (%v)", d, lerr)
			}
		}
	})
}
