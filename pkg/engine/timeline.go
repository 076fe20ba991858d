package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stasis-dev/stasis/pkg/store"
)

// TimelineOptions make a timeline: a checkpoint of a running container
// every Every, the Keep newest kept.
type TimelineOptions struct {
	Every time.Duration
	Keep  int
	// Count stops after that many checkpoints (0: until ctx ends).
	Count int
	CheckpointOptions
}

// Timeline checkpoints a container periodically, leaving it running, into
// the store, and prunes its oldest checkpoints beyond Keep. done is called
// after each checkpoint. It returns when ctx ends, Count is reached, or a
// checkpoint fails.
func (e *Engine) Timeline(ctx context.Context, ref string, o TimelineOptions, done func(*CheckpointResult)) error {
	if o.Every <= 0 || o.Keep < 1 {
		return errors.New("timeline: --every must be positive and --keep at least 1")
	}
	if o.Export != "" || o.CreateImage != "" {
		return errors.New("timeline: checkpoints go to the store; --export and --create-image do not apply")
	}
	o.LeaveRunning, o.ShareRootfs = true, true
	tick := time.NewTicker(o.Every)
	defer tick.Stop()
	for n := 1; ; n++ {
		res, err := e.Checkpoint(ctx, ref, o.CheckpointOptions)
		if err != nil {
			return err
		}
		if err := e.prune(res.Container, o.Keep); err != nil {
			return err
		}
		if done != nil {
			done(res)
		}
		if o.Count > 0 && n >= o.Count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (e *Engine) prune(container string, keep int) error {
	h, err := e.History(container)
	if err != nil {
		return err
	}
	for len(h) > keep {
		if err := e.Checkpoints.Delete(h[0].ID); err != nil {
			return err
		}
		h = h[1:]
	}
	return nil
}

// History is a container's stored checkpoints, oldest first.
func (e *Engine) History(container string) ([]*store.Entry, error) {
	all, err := e.Checkpoints.List()
	if err != nil {
		return nil, err
	}
	var out []*store.Entry
	for _, ent := range all {
		if ent.ContainerName == container || ent.ContainerID == container {
			out = append(out, ent)
		}
	}
	return out, nil
}

// Rewind stops a container and restores it in place from entry n (1 is
// the oldest) of its history.
func (e *Engine) Rewind(ctx context.Context, container string, n int, o RestoreOptions) (*RestoreResult, error) {
	c, err := e.Get(ctx, container)
	if err != nil {
		return nil, err
	}
	h, err := e.History(c.ID)
	if err != nil {
		return nil, err
	}
	if n < 1 || n > len(h) {
		return nil, fmt.Errorf("rewind %s: --to %d, but its history has entries 1 to %d", c.Name, n, len(h))
	}
	if err := e.Stop(ctx, c.ID, 0); err != nil {
		return nil, fmt.Errorf("rewind %s: %w", c.Name, err)
	}
	o.Container, o.Checkpoint, o.Import = c.Name, h[n-1].ID, ""
	return e.Restore(ctx, o)
}
