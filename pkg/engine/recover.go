package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/flock"
	"github.com/stasis-dev/stasis/pkg/runc"
)

// workDir makes a private directory under <root>/work for one operation,
// with a lock on it held for as long as the operation (or a process it
// hands the directory to, which inherits the lock) lives: Recover removes
// only directories whose lock is free.
func (e *Engine) workDir(prefix string) (string, *os.File, error) {
	dir, err := os.MkdirTemp(filepath.Join(e.root, "work"), prefix)
	if err != nil {
		return "", nil, err
	}
	lock, err := flock.TryLock(filepath.Join(dir, ".lock"))
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, lock, nil
}

// abandoned reports whether the lock in dir is free: its owner is gone.
func abandoned(dir string) bool { return flock.Free(filepath.Join(dir, ".lock")) }

// Recover undoes what a stasis killed in the middle of an operation left
// behind: containers a dump froze and never thawed run again, and work
// directories and store entries nobody is writing any more are removed.
// It returns what it did.
func (e *Engine) Recover(ctx context.Context) ([]string, error) {
	var did []string
	cs, err := e.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		// stasis never pauses a container on purpose: a paused one is a
		// dump's freeze that outlived the dump.
		if c.Status == StatusPaused {
			if err := e.rt.Resume(ctx, c.ID); err != nil {
				// The dying dump's CRIU may thaw it itself as we look.
				if st, serr := e.rt.State(ctx, c.ID); serr == nil && st.Status != runc.Paused {
					did = append(did, "found "+c.Name+" thawed already")
					continue
				}
				return did, fmt.Errorf("thaw %s: %w", c.Name, err)
			}
			did = append(did, "thawed "+c.Name)
		}
	}
	work := filepath.Join(e.root, "work")
	ents, _ := os.ReadDir(work)
	for _, d := range ents {
		p := filepath.Join(work, d.Name())
		if d.IsDir() && abandoned(p) {
			unix.Unmount(filepath.Join(p, memDir), unix.MNT_DETACH) // an eager restore's, if any
			os.RemoveAll(p)
			did = append(did, "removed "+p)
		}
	}
	if r, ok := e.Checkpoints.(interface{ RemoveAbandoned() []string }); ok {
		did = append(did, r.RemoveAbandoned()...)
	}
	return did, nil
}
