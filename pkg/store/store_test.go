package store

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func put(t *testing.T, d *Dir, name, shared string) *Entry {
	t.Helper()
	e, err := d.Put(Entry{ContainerName: name, Created: time.Now(), RootfsDiff: shared}, "checkpoint.tar", func(p string) (Written, error) {
		return Written{Size: 3, Digest: "sha256:abc"}, os.WriteFile(p, []byte("tar"), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func links(t *testing.T, p string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return uint64(st.Nlink)
}

// Entries with the same rootfs diff share one file; the last delete
// removes it.
func TestSharedRootfsDiff(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	diff := filepath.Join(t.TempDir(), "rootfs-diff.tar")
	os.WriteFile(diff, []byte("same bytes"), 0o600)
	a, b := put(t, d, "web", diff), put(t, d, "web", diff)
	if a.RootfsDiff == "" || b.RootfsDiff == "" {
		t.Fatal("entries do not say where their rootfs diff is")
	}
	os.Remove(diff)                          // as the engine removes its work directory
	if n := links(t, a.RootfsDiff); n != 3 { // the pool's copy and two entries
		t.Fatalf("the diff has %d links, want 3", n)
	}
	pool, _ := filepath.Glob(filepath.Join(d.root, sharedDir, "*.tar"))
	if len(pool) != 1 {
		t.Fatalf("pool holds %v", pool)
	}
	d.Delete(a.ID)
	if _, err := os.Stat(pool[0]); err != nil {
		t.Fatal("the shared diff went while an entry still uses it")
	}
	d.Delete(b.ID)
	if _, err := os.Stat(pool[0]); !os.IsNotExist(err) {
		t.Fatal("the shared diff outlived the last entry")
	}
}

// A half-made entry whose writer died is removed; one being written is not.
func TestRemoveAbandoned(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(d.root, partialPrefix+"dead")
	os.MkdirAll(dead, 0o700)
	os.WriteFile(filepath.Join(dead, ".lock"), nil, 0o600)
	live := filepath.Join(d.root, partialPrefix+"live")
	os.MkdirAll(live, 0o700)
	f, _ := os.OpenFile(filepath.Join(live, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	// The lock is per open file: a second open in this process contends
	// like another process would.
	did := d.RemoveAbandoned()
	if _, err := os.Stat(dead); !os.IsNotExist(err) || len(did) != 1 {
		t.Fatalf("abandoned entry left (did %v)", did)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatal("an entry being written was removed")
	}
	if list, _ := d.List(); len(list) != 0 {
		t.Fatalf("partial entries listed: %v", list)
	}
}
