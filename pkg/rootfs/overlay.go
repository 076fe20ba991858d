// Package rootfs builds a container's root filesystem: an overlay of the
// image's read-only rootfs and a per-container upper directory, and the
// rootfs diff a checkpoint carries (the upper dir's files plus a list of
// deletions) in both directions.
package rootfs

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Layout is where one container's overlay lives.
type Layout struct {
	Lower  string // image rootfs, never written; or a lowerdir list (a:b)
	Upper  string // the container's writes
	Work   string // overlayfs scratch
	Merged string // the mount point handed to the runtime
}

// NewLayout places upper, work and merged under dir.
func NewLayout(lower, dir string) Layout {
	return Layout{
		Lower:  lower,
		Upper:  filepath.Join(dir, "upper"),
		Work:   filepath.Join(dir, "work"),
		Merged: filepath.Join(dir, "merged"),
	}
}

// Mount creates the directories and mounts the overlay, unless it already is.
func (l Layout) Mount() error {
	for _, d := range []string{l.Upper, l.Work, l.Merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The upper dir's mode becomes the mode of the container's "/". CRIU
	// checks it on restore, and containers/storage (Podman, CRI-O) makes it
	// 0555: the same mode lets archives restore in either direction.
	if err := os.Chmod(l.Upper, 0o555); err != nil {
		return err
	}
	if mounted(l.Merged) {
		return nil
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", l.Lower, l.Upper, l.Work)
	if err := unix.Mount("overlay", l.Merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", l.Merged, err)
	}
	return nil
}

// Unmount detaches the overlay; it is not an error if it is not mounted.
func (l Layout) Unmount() error {
	if !mounted(l.Merged) {
		return nil
	}
	if err := unix.Unmount(l.Merged, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmount %s: %w", l.Merged, err)
	}
	return nil
}

// mounted compares the device of dir and its parent, which differ exactly
// when dir is a mount point (overlay gets its own anonymous device).
func mounted(dir string) bool {
	var a, b unix.Stat_t
	if unix.Lstat(dir, &a) != nil || unix.Lstat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}
