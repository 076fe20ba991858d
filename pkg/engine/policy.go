package engine

import (
	"errors"
	"fmt"
)

// ErrOptedOut is returned when a container's labels refuse the operation.
var ErrOptedOut = errors.New("refused by the container's opt-out label")

// Opt-out labels: a developer marks a workload that must never be
// checkpointed (it holds secrets in memory that must not reach a disk) or
// never migrated (its checkpoints must not leave the node). They hold
// whoever asks, the CLI as much as the agent.
const (
	LabelCheckpoint = "stasis.dev/checkpoint"
	LabelMigrate    = "stasis.dev/migrate"
	OptOut          = "never" // the value of an opt-out label
)

// mayCheckpoint refuses a container that opted out; leaving is true when
// the checkpoint would leave the node (an export, an image).
func mayCheckpoint(c *Container, leaving bool) error {
	if c.Labels[LabelCheckpoint] == OptOut {
		return fmt.Errorf("checkpoint %s: %w: it is labelled %s=%s and is never checkpointed", c.Name, ErrOptedOut, LabelCheckpoint, OptOut)
	}
	if leaving && c.Labels[LabelMigrate] == OptOut {
		return fmt.Errorf("checkpoint %s: %w: it is labelled %s=%s, so its checkpoints stay in this node's store (no --export or --create-image)", c.Name, ErrOptedOut, LabelMigrate, OptOut)
	}
	return nil
}
