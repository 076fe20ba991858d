// Package flock is the one way stasis takes file locks: flock(2), which
// the kernel drops when its holder dies. That is how what a killed
// operation left (a work directory, a store entry half written) is told
// from what a running one still uses: its lock is free.
package flock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned by TryLock when another process holds the lock.
var ErrLocked = errors.New("locked by another process")

// Lock takes an exclusive lock on path, creating the file, and waits for
// it. Closing the file releases it.
func Lock(path string) (*os.File, error) { return lock(path, unix.LOCK_EX) }

// Shared takes a shared lock on path, creating the file, and waits for
// it: any number of holders, but none while an exclusive lock is held.
func Shared(path string) (*os.File, error) { return lock(path, unix.LOCK_SH) }

// TryLock takes the lock only if it is free, else fails with ErrLocked.
func TryLock(path string) (*os.File, error) { return lock(path, unix.LOCK_EX|unix.LOCK_NB) }

func lock(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// Free reports whether nobody holds the lock at path; a missing file is
// free. It does not create the file.
func Free(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return os.IsNotExist(err)
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
}
