package flock

import (
	"errors"
	"path/filepath"
	"testing"
)

// flock(2) locks belong to an open file, so two opens in one process
// contend as two processes would.
func TestTryLockAndFree(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".lock")
	if !Free(p) {
		t.Fatal("a missing lock file is not free")
	}
	f, err := TryLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second TryLock: %v, want ErrLocked", err)
	}
	if Free(p) {
		t.Fatal("a held lock is free")
	}
	f.Close()
	if !Free(p) {
		t.Fatal("a released lock is not free")
	}
	g, err := Lock(p)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
}
