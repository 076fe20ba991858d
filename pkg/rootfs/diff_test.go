package rootfs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A container's changes keep what makes them work when they come back:
// setuid, setgid and sticky bits, owners, times, user xattrs and file
// capabilities; overlayfs' own xattrs stay behind.
func TestDiffApplyKeepsModesOwnersTimesXattrs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chown and security.capability")
	}
	upper := filepath.Join(t.TempDir(), "upper")
	must(t, os.MkdirAll(filepath.Join(upper, "usr/bin"), 0o755))
	must(t, os.Mkdir(filepath.Join(upper, "tmp"), 0o755))
	must(t, os.Chmod(filepath.Join(upper, "tmp"), 0o1777|os.ModeSticky))
	suid := filepath.Join(upper, "usr/bin/suid")
	must(t, os.WriteFile(suid, []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Chown(suid, 0, 42))
	must(t, os.Chmod(suid, 0o755|os.ModeSetuid|os.ModeSetgid))
	// A file capability (cap_net_bind_service=ep, VFS_CAP_REVISION_2).
	capability := []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(t, unix.Setxattr(suid, "security.capability", capability, 0))
	if err := unix.Setxattr(suid, "user.origin", []byte("ci"), 0); err != nil {
		t.Skipf("the test filesystem has no user xattrs: %v", err)
	}
	if err := unix.Setxattr(filepath.Join(upper, "usr"), "trusted.overlay.origin", []byte("x"), 0); err != nil {
		t.Logf("no trusted xattr to test with: %v", err)
	}
	when := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, p := range []string{suid, filepath.Join(upper, "tmp"), filepath.Join(upper, "usr/bin")} {
		must(t, os.Chtimes(p, when, when))
	}

	var diff bytes.Buffer
	if _, err := (Layout{Upper: upper}).Diff(&diff); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root")
	must(t, os.Mkdir(root, 0o755))
	if err := Apply(context.Background(), root, &diff, nil, 0); err != nil {
		t.Fatal(err)
	}

	for p, want := range map[string]os.FileMode{
		"tmp":          os.ModeDir | os.ModeSticky | 0o777,
		"usr/bin":      os.ModeDir | 0o755, // suid is written into it after it is made: its time is set last
		"usr/bin/suid": os.ModeSetuid | os.ModeSetgid | 0o755,
	} {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		if !fi.ModTime().Equal(when) {
			t.Errorf("%s: mtime %v, want %v", p, fi.ModTime(), when)
		}
	}
	got := filepath.Join(root, "usr/bin/suid")
	var st unix.Stat_t
	must(t, unix.Lstat(got, &st))
	if st.Gid != 42 {
		t.Errorf("gid %d, want 42", st.Gid)
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(got, "security.capability", buf); err != nil || !bytes.Equal(buf[:n], capability) {
		t.Errorf("security.capability: %x, %v", buf[:max(n, 0)], err)
	}
	if n, err := unix.Lgetxattr(got, "user.origin", buf); err != nil || string(buf[:n]) != "ci" {
		t.Errorf("user.origin: %q, %v", buf[:max(n, 0)], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(root, "usr"), "trusted.overlay.origin", buf); err == nil {
		t.Errorf("trusted.overlay.origin was copied")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
