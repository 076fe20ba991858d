// Package policy is the opt-out rule every checkpoint path obeys. A
// developer marks a workload that must never be checkpointed (it holds
// secrets in memory that must not reach a disk) or never migrated (its
// checkpoints must not leave its node). The mark is a container's label
// or a pod's annotation, and it holds whoever asks: the CLI, the node
// agent and the controller all call MayCheckpoint, so that none of them
// can be the one path that forgets.
package policy

import (
	"errors"
	"fmt"
)

// The opt-out keys, and the one value that opts out. They are the same for
// container labels and pod annotations, so a pod's mark reads as its
// containers' would.
const (
	// Checkpoint=Never: the workload is never checkpointed.
	Checkpoint = "stasis.dev/checkpoint"
	// Migrate=Never: the workload may be checkpointed, but its
	// checkpoints stay on its node.
	Migrate = "stasis.dev/migrate"
	// Never is the value that opts out; any other value, in any case,
	// opts out of nothing.
	Never = "never"
)

// ErrOptedOut is what every refusal wraps, so a caller can tell it from a
// failure (the agent answers it with 403).
var ErrOptedOut = errors.New("refused by the container's opt-out label")

// MayCheckpoint refuses to checkpoint what (named in the error: "container
// web", "pod ns/p") when its marks (a container's labels, a pod's
// annotations) opt it out. leaving says the checkpoint would leave the
// node: an export, an image, a push to a registry.
func MayCheckpoint(what string, marks map[string]string, leaving bool) error {
	if marks[Checkpoint] == Never {
		return fmt.Errorf("checkpoint %s: %w: it is marked %s=%s and is never checkpointed",
			what, ErrOptedOut, Checkpoint, Never)
	}
	if leaving && marks[Migrate] == Never {
		return fmt.Errorf("checkpoint %s: %w: it is marked %s=%s, so its checkpoints stay on its node: "+
			"it may be checkpointed there, but not exported, made into an image or pushed to a registry",
			what, ErrOptedOut, Migrate, Never)
	}
	return nil
}
