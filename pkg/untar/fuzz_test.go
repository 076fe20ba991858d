package untar

// Fuzz targets for Extract, the one way a tar from elsewhere is unpacked.
// Every input, seeds included, is extracted into <tmp>/root beside
// <tmp>/outside (a sentinel file), and must leave everything but root as it
// was, leave no device node in root, nothing but files and directories for
// Members, no symlink that climbs out, and end in an error at worst: never
// a panic, never a hang. FuzzExtract mutates raw tar bytes (the reader's
// parsing); FuzzExtractEntries mutates a list of entries that is written as
// a valid tar, which reaches far more of the extractor itself.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/internal/treesnap"
)

// seed is a hand-built tar and what extracting it must give.
type seed struct {
	name   string
	script string // entries, see tarOf; empty when raw is set
	raw    []byte
	kind   Kind
	want   error // nil: success; errAny: any error
	check  func(t *testing.T, root string)
}

var errAny = errors.New("any error")

// capNetBindService is a vfs_cap_data v2: cap_net_bind_service=+ep.
const capNetBindService = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

func seeds(t testing.TB) []seed {
	long := strings.Repeat("d", 200) + "/" + strings.Repeat("f", 200)
	return []seed{
		{name: "files and dirs", kind: Members, script: "5|a/|||\n0|a/b||644|hello\n0|c||600|", check: hasFile("a/b", "hello")},
		{name: "empty", kind: Tree, raw: []byte{}},
		{name: "garbage", kind: Tree, raw: bytes.Repeat([]byte("stasis"), 200), want: errAny},
		{name: "absolute", kind: Tree, script: "0|/etc/stasis-fuzz||644|x", want: ErrUnsafePath},
		{name: "dotdot", kind: Tree, script: "0|../outside/x||644|x", want: ErrUnsafePath},
		{name: "inner dotdot", kind: Tree, script: "0|a/../../outside/x||644|x", want: ErrUnsafePath},
		{name: "symlink out", kind: Tree, script: "2|l|../outside", want: ErrUnsafePath},
		{name: "symlink out deep", kind: Tree, script: "2|a/l|../../outside", want: ErrUnsafePath},
		{name: "symlink in members", kind: Members, script: "2|l|a", want: ErrUnsafePath},
		{name: "file through absolute symlink", kind: Tree, script: "2|l|/\n0|l/escape||644|x", check: hasFile("escape", "x")},
		{name: "file through absolute symlink to outside", kind: Tree, script: "2|l|@OUT@\n0|l/escape||644|x\n0|l/sentinel||644|x"},
		{name: "dir through absolute symlink to outside", kind: Tree, script: "2|l|@OUT@\n5|l/d/||777\n2|l/s|/\n6|l/p||600"},
		{name: "whiteout through absolute symlink to outside", kind: Tree, script: "2|l|@OUT@\n0|l/.wh.sentinel||0|\n3|l/sentinel||0||||0:0"},
		{name: "opaque through absolute symlink to outside", kind: Tree, script: "2|l|@OUT@\n0|l/.wh..wh..opq||0|\n5|l/||755||SCHILY.xattr.trusted.overlay.opaque=y"},
		{name: "hardlink to outside by absolute name", kind: Tree, script: "1|h|@OUT@/sentinel", want: ErrUnsafePath},
		{name: "hardlink through absolute symlink to outside", kind: Tree, script: "2|l|@OUT@\n1|h|l/sentinel", want: ErrUnsafePath},
		{name: "file through symlink to dir", kind: Tree, script: "5|d/|||\n2|l|d\n0|l/f||644|y", check: hasFile("d/f", "y")},
		{name: "symlink then replaced", kind: Tree, script: "2|x|/\n0|x||644|z", check: hasFile("x", "z")},
		{name: "hardlink out", kind: Tree, script: "1|h|../outside/sentinel", want: ErrUnsafePath},
		{name: "hardlink absolute", kind: Tree, script: "1|h|/etc/passwd", want: ErrUnsafePath},
		{name: "hardlink to dir", kind: Tree, script: "5|a/|||\n1|h|a", want: ErrUnsafePath},
		{name: "hardlink through symlink", kind: Tree, script: "0|c||644|c\n2|s|/\n1|h|s/c", check: hasFile("h", "c")},
		{name: "hardlink through escaping name", kind: Tree, script: "2|s|/\n1|h|s/../outside/sentinel", want: ErrUnsafePath},
		// A work directory's lock, say: a member must not take its place.
		{name: "members replacing what was there", kind: Members, script: "0|pre/old||644|mine", want: ErrUnsafePath, check: hasFile("pre/old", "sentinel")},
		{name: "members replacing their own", kind: Members, script: "0|c||644|1\n0|c||644|2", check: hasFile("c", "2")},
		{name: "hardlink in members", kind: Members, script: "0|c||644|c\n1|h|c", want: ErrUnsafePath},
		{name: "whiteout char 0:0", kind: Tree, script: "0|w||644|w\n3|w||0||||0:0", check: absent("w")},
		{name: "whiteout char 0:0 in members", kind: Members, script: "3|w||0||||0:0", want: ErrUnsafePath},
		{name: "whiteout file", kind: Tree, script: "0|pre/.wh.old||0|", check: absent("pre/old")},
		{name: "opaque whiteout", kind: Tree, script: "0|pre/new||644|n\n0|pre/.wh..wh..opq||0|", check: func(t *testing.T, root string) {
			absent("pre/old")(t, root)
			hasFile("pre/new", "n")(t, root)
		}},
		{name: "opaque xattr", kind: Tree, script: "5|pre/||755||SCHILY.xattr.trusted.overlay.opaque=y", check: func(t *testing.T, root string) {
			absent("pre/old")(t, root)
			if _, err := unix.Lgetxattr(filepath.Join(root, "pre"), "trusted.overlay.opaque", make([]byte, 8)); err == nil {
				t.Error("trusted.overlay.opaque was set")
			}
		}},
		{name: "whiteout of root", kind: Tree, script: "0|.wh..||0|", want: ErrUnsafePath},
		{name: "whiteout in members is a file", kind: Members, script: "0|.wh.x||644|", check: hasFile(".wh.x", "")},
		{name: "block device", kind: Tree, script: "4|sda||600||||8:0", want: ErrUnsafePath},
		{name: "char device", kind: Tree, script: "3|null||666||||1:3", want: ErrUnsafePath},
		{name: "fifo", kind: Tree, script: "6|p||600", check: func(t *testing.T, root string) {
			if fi, err := os.Lstat(filepath.Join(root, "p")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
				t.Errorf("p is no FIFO: %v", err)
			}
		}},
		{name: "fifo in members", kind: Members, script: "6|p||600", want: ErrUnsafePath},
		// os.RemoveAll and os.ReadDir open what they look inside, and an
		// open of a FIFO waits for a writer: these hung.
		{name: "whiteout under a fifo", kind: Tree, script: "6|p||600\n0|p/.wh.x||0|\n3|p/y||0||||0:0"},
		{name: "opaque under a fifo", kind: Tree, script: "6|p||600\n0|p/.wh..wh..opq||0|\n5|p/||755||SCHILY.xattr.trusted.overlay.opaque=y", check: func(t *testing.T, root string) {
			if fi, err := os.Lstat(filepath.Join(root, "p")); err != nil || !fi.IsDir() {
				t.Errorf("p is no directory: %v", err)
			}
		}},
		{name: "long names", kind: Tree, script: "0|" + long + "||644|long\n2|" + long + "l|/" + long, check: hasFile(long, "long")},
		{name: "gnu sparse", kind: Tree, raw: gnuSparse(t, 8192), check: func(t *testing.T, root string) {
			if fi, err := os.Stat(filepath.Join(root, "sparse")); err != nil || fi.Size() != 8192 {
				t.Errorf("sparse: %v %v", fi, err)
			}
		}},
		{name: "gnu sparse bomb", kind: Tree, raw: gnuSparse(t, 1<<40), want: ErrTooLarge},
		{name: "huge size", kind: Members, raw: hugeSize(t), want: ErrTooLarge},
		{name: "modes", kind: Tree, script: "0|suid||4755|\n0|sgid||2755|\n5|tmp/||1777", check: func(t *testing.T, root string) {
			for p, m := range map[string]fs.FileMode{"suid": fs.ModeSetuid, "sgid": fs.ModeSetgid, "tmp": fs.ModeSticky} {
				if fi, err := os.Lstat(filepath.Join(root, p)); err != nil || fi.Mode()&m == 0 {
					t.Errorf("%s: mode %v, %v", p, fi.Mode(), err)
				}
			}
		}},
		{name: "xattrs", kind: Tree, script: "0|f||755|f|SCHILY.xattr.user.x=1,SCHILY.xattr.security.capability=" + capNetBindService +
			",SCHILY.xattr.trusted.overlay.redirect=/etc,SCHILY.xattr.security.selinux=system_u:object_r:shadow_t:s0", check: func(t *testing.T, root string) {
			p := filepath.Join(root, "f")
			if _, err := unix.Lgetxattr(p, "trusted.overlay.redirect", make([]byte, 64)); err == nil {
				t.Error("trusted.overlay.redirect was set")
			}
			if n, err := unix.Lgetxattr(p, "security.capability", make([]byte, 64)); err != nil || n != len(capNetBindService) {
				t.Errorf("security.capability: %d %v", n, err)
			}
		}},
		{name: "capability on dir", kind: Tree, script: "5|d/||755||SCHILY.xattr.security.capability=" + capNetBindService, check: func(t *testing.T, root string) {
			if _, err := unix.Lgetxattr(filepath.Join(root, "d"), "security.capability", make([]byte, 64)); err == nil {
				t.Error("security.capability set on a directory")
			}
		}},
		{name: "dir over file over dir", kind: Tree, script: "0|x||644|1\n5|x/|||\n0|x/y||644|2\n0|x||644|3", check: hasFile("x", "3")},
		{name: "times", kind: Tree, script: "0|old||644|||||-1\n0|future||644|||||99999999999"},
	}
}

// tarOf writes a tar from a script: one entry a line, fields split by '|':
// typeflag|name|linkname|mode (octal)|body|pax records (k=v,k=v)|uid:gid|
// devmajor:devminor|mtime (unix seconds). Missing fields are zero; a
// regular file's size is its body's. Entries tar.Writer refuses are left
// out, so every script is a valid tar. "@OUT@" stands for the absolute
// path of the directory beside the root.
func tarOf(script, outside string) []byte {
	script = strings.ReplaceAll(script, "@OUT@", outside)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, line := range strings.Split(script, "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "|")
		for len(f) < 9 {
			f = append(f, "")
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f[1], Linkname: f[2], ModTime: time.Unix(1700000000, 0)}
		if f[0] != "" {
			h.Typeflag = f[0][0]
		}
		if m, err := strconv.ParseInt(f[3], 8, 64); err == nil {
			h.Mode = m
		}
		switch h.Typeflag {
		case tar.TypeReg, 0, tar.TypeCont: // the types tar.Writer takes data for
			h.Size = int64(len(f[4]))
		}
		for _, kv := range strings.Split(f[5], ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				if h.PAXRecords == nil {
					h.PAXRecords = map[string]string{}
				}
				h.PAXRecords[k] = v
			}
		}
		u, g, _ := strings.Cut(f[6], ":")
		h.Uid, _ = strconv.Atoi(u)
		h.Gid, _ = strconv.Atoi(g)
		ma, mi, _ := strings.Cut(f[7], ":")
		h.Devmajor, _ = strconv.ParseInt(ma, 10, 64)
		h.Devminor, _ = strconv.ParseInt(mi, 10, 64)
		if s, err := strconv.ParseInt(f[8], 10, 64); err == nil {
			h.ModTime = time.Unix(s, 0)
		}
		if err := tw.WriteHeader(h); err != nil {
			continue
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(f[4])); err != nil {
				break
			}
		}
	}
	tw.Close()
	return buf.Bytes()
}

// gnuSparse is an old-GNU sparse file "sparse" of size realSize holding
// 512 bytes of data at offset 4096 (tar.Writer cannot write sparse files,
// so the header is patched).
func gnuSparse(t testing.TB, realSize int64) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "sparse", Mode: 0o644, Size: 512, Format: tar.FormatGNU}); err != nil {
		t.Fatal(err)
	}
	tw.Write(bytes.Repeat([]byte{'s'}, 512))
	tw.Close()
	b := buf.Bytes()
	octal := func(off, n int, v int64) { copy(b[off:off+n], fmt.Sprintf("%0*o\x00", n-1, v)) }
	b[156] = tar.TypeGNUSparse
	octal(386, 12, 4096) // sparse[0].offset
	octal(398, 12, 512)  // sparse[0].numbytes
	octal(483, 12, realSize)
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b[:512] {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// hugeSize is a header that claims a terabyte, and no data.
func hugeSize(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func hasFile(name, body string) func(*testing.T, string) {
	return func(t *testing.T, root string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || string(b) != body {
			t.Errorf("%s: %q, %v; want %q", name, b, err, body)
		}
	}
}

func absent(name string) func(*testing.T, string) {
	return func(t *testing.T, root string) {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(root, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there (%v)", name, err)
		}
	}
}

func FuzzExtract(f *testing.F) {
	for _, s := range seeds(f) {
		b := s.raw
		if b == nil {
			b = tarOf(s.script, "/")
		}
		f.Add(b, s.kind == Tree)
	}
	f.Fuzz(func(t *testing.T, b []byte, tree bool) {
		extractChecked(t, func(string) []byte { return b }, kindOf(tree))
	})
}

func FuzzExtractEntries(f *testing.F) {
	for _, s := range seeds(f) {
		if s.raw == nil {
			f.Add(s.script, s.kind == Tree)
		}
	}
	f.Fuzz(func(t *testing.T, script string, tree bool) {
		extractChecked(t, func(out string) []byte { return tarOf(script, out) }, kindOf(tree))
	})
}

// TestSeeds checks that each seed gives what it was built for, so the
// corpus exercises what it claims to.
func TestSeeds(t *testing.T) {
	for _, s := range seeds(t) {
		t.Run(s.name, func(t *testing.T) {
			if s.want == nil && os.Geteuid() != 0 {
				t.Skip("a successful extraction chowns every entry, which needs root")
			}
			tarball := func(out string) []byte {
				if s.raw != nil {
					return s.raw
				}
				return tarOf(s.script, out)
			}
			root, err := extractChecked(t, tarball, s.kind)
			switch {
			case s.want == errAny && err == nil:
				t.Fatal("extracted without error")
			case s.want != errAny && !errors.Is(err, s.want):
				t.Fatalf("got %v, want %v", err, s.want)
			}
			if s.check != nil {
				s.check(t, root)
			}
		})
	}
}

func kindOf(tree bool) Kind {
	if tree {
		return Tree
	}
	return Members
}

// maxBytes keeps each run small; the limit is part of what is checked.
const maxBytes = 1 << 20

// extractChecked extracts the tar made for the outside dir's path into a
// fresh root and checks the invariants. root holds pre/old and pre/keep/
// beforehand, for whiteouts to remove.
func extractChecked(t *testing.T, tarball func(outside string) []byte, kind Kind) (string, error) {
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	for _, d := range []string{filepath.Join(tmp, "outside"), filepath.Join(root, "pre", "keep")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(tmp, "outside", "sentinel"), filepath.Join(root, "pre", "old")} {
		if err := os.WriteFile(p, []byte("sentinel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := tarball(filepath.Join(tmp, "outside"))
	before := treesnap.MustTake(t, tmp, root)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	defer treesnap.Watchdog(30 * time.Second)()
	err := Extract(ctx, bytes.NewReader(b), root, Options{Kind: kind, MaxBytes: maxBytes})
	if ctx.Err() != nil {
		t.Fatalf("extraction ran past its deadline: %v", err)
	}
	after := treesnap.MustTake(t, tmp, root)
	if d := after.Diff(before); d != "" {
		t.Errorf("outside the root (extract: %v):\n%s", err, d)
	}
	if fi, lerr := os.Lstat(root); lerr != nil || !fi.IsDir() {
		t.Fatalf("root is gone or no directory: %v", lerr)
	}
	var used int64
	inodes := map[uint64]bool{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, werr error) error {
		if werr != nil {
			t.Errorf("walk %s: %v", p, werr)
			return nil
		}
		fi, ierr := d.Info()
		if ierr != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		m := fi.Mode()
		switch {
		case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
			t.Errorf("%s is a device node (%v)", rel, m)
		case kind == Members && !m.IsRegular() && !m.IsDir():
			t.Errorf("%s is a %v in a Members extraction", rel, m.Type())
		case m&fs.ModeSymlink != 0:
			// Lexically, as SymlinkEscapes, but not with it.
			target, _ := os.Readlink(p)
			if !filepath.IsAbs(target) && !strings.HasPrefix(filepath.Join(filepath.Dir(p), target)+"/", root+"/") {
				t.Errorf("%s -> %s points outside the root", rel, target)
			}
		case m.IsRegular():
			if ino := fi.Sys().(*syscall.Stat_t).Ino; !inodes[ino] {
				inodes[ino] = true
				used += fi.Size()
			}
		}
		return nil
	})
	if used > maxBytes+int64(len("sentinel")) {
		t.Errorf("%d bytes written, more than the limit of %d", used, maxBytes)
	}
	return root, err
}
