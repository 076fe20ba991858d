package untar_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/untar"
)

// openTree builds <tmp>/root, an unpacked tree holding one of each thing
// OpenFile, ReadFile and CheckDir must refuse, beside <tmp>/x, a file
// outside it that "../x" would reach.
func openTree(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{root, filepath.Join(root, "etc"), filepath.Join(base, "elsewhere")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(base, "x"), "outside")
	write(filepath.Join(base, "elsewhere", "passwd"), "outside")
	write(filepath.Join(root, "etc", "passwd"), "root:x:0:0::/root:/bin/sh\n")
	write(filepath.Join(root, "big"), string(bytes.Repeat([]byte("a"), 100)))
	for link, target := range map[string]string{
		"link":    "etc/passwd",             // a symlink member, to a good file inside
		"linkdir": "etc",                    // a symlinked parent directory, inside
		"outdir":  "../elsewhere",           // a symlinked parent directory, outside
		"abslink": filepath.Join(base, "x"), // a symlink member, outside
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestOpenFileRefuses(t *testing.T) {
	root := openTree(t)
	const max = 64

	for _, tc := range []struct{ what, name string }{
		{"symlink member", "link"},
		{"symlink member pointing outside", "abslink"},
		{"member under a symlinked parent", "linkdir/passwd"},
		{"member under a symlinked parent outside", "outdir/passwd"},
		{"FIFO", "fifo"},
		{"escaping with ..", "../x"},
		{"directory", "etc"},
		{"larger than max", "big"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			type result struct {
				b   []byte
				err error
			}
			done := make(chan result, 1)
			go func() {
				b, err := untar.ReadFile(root, tc.name, max)
				done <- result{b, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				// Let a reader stuck on the FIFO go before failing.
				if fd, err := unix.Open(filepath.Join(root, "fifo"), unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					unix.Close(fd)
				}
				t.Fatalf("ReadFile(%q) still blocked after 10s", tc.name)
			}
			if !errors.Is(r.err, untar.ErrUnsafePath) {
				t.Fatalf("ReadFile(%q) = %q, %v; want ErrUnsafePath", tc.name, r.b, r.err)
			}
			if r.b != nil {
				t.Errorf("ReadFile(%q) returned %q along with its error", tc.name, r.b)
			}
		})
	}

	// OpenFile on its own refuses the same, with no file left to close.
	for _, name := range []string{"link", "linkdir/passwd", "fifo", "../x"} {
		f, err := untar.OpenFile(root, name)
		if !errors.Is(err, untar.ErrUnsafePath) {
			t.Errorf("OpenFile(%q) = %v; want ErrUnsafePath", name, err)
		}
		if f != nil {
			f.Close()
			t.Errorf("OpenFile(%q) returned a file along with its error", name)
		}
	}

	for _, tc := range []struct{ what, name string }{
		{"symlink to a directory", "linkdir"},
		{"symlink to a directory outside", "outdir"},
		{"regular file", "etc/passwd"},
		{"FIFO", "fifo"},
		{"escaping with ..", ".."},
		{"directory under a symlinked parent", "linkdir/."},
	} {
		if err := untar.CheckDir(root, tc.name); !errors.Is(err, untar.ErrUnsafePath) {
			t.Errorf("CheckDir(%q) (%s) = %v; want ErrUnsafePath", tc.name, tc.what, err)
		}
	}

	// What is missing is reported as missing, not as unsafe.
	if _, err := untar.ReadFile(root, "etc/shadow", max); !errors.Is(err, os.ErrNotExist) || errors.Is(err, untar.ErrUnsafePath) {
		t.Errorf("ReadFile of a missing file = %v; want os.ErrNotExist", err)
	}
	if f, err := untar.OpenFile(root, "nope/x"); !errors.Is(err, os.ErrNotExist) {
		if f != nil {
			f.Close()
		}
		t.Errorf("OpenFile of a missing file = %v; want os.ErrNotExist", err)
	}
	if err := untar.CheckDir(root, "var"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CheckDir of a missing directory = %v; want os.ErrNotExist", err)
	}

	// And what is good is read back, whole: at exactly max bytes too.
	b, err := untar.ReadFile(root, "etc/passwd", max)
	if err != nil || string(b) != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("ReadFile(etc/passwd) = %q, %v", b, err)
	}
	if b, err := untar.ReadFile(root, "big", 100); err != nil || len(b) != 100 {
		t.Errorf("ReadFile(big, 100) = %d bytes, %v; want 100 bytes", len(b), err)
	}
	f, err := untar.OpenFile(root, "etc/passwd")
	if err != nil {
		t.Fatalf("OpenFile(etc/passwd): %v", err)
	}
	defer f.Close()
	// Reads block again once the file is known to be regular.
	if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("OpenFile(etc/passwd) left flags %#x, %v; want O_NONBLOCK cleared", fl, err)
	}
	for _, name := range []string{"etc", "etc/", "."} {
		if err := untar.CheckDir(root, name); err != nil {
			t.Errorf("CheckDir(%q) = %v", name, err)
		}
	}
}
