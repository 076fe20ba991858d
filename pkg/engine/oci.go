package engine

import (
	"context"
	"io"

	"github.com/stasis-dev/stasis/pkg/runc"
)

// Runtime is what the engine asks of an OCI runtime. pkg/runc's Runtime
// (or crun) is the one that runs; a dump takes it as a parameter because a
// pod's containers belong to the CRI runtime's runc, and tests stand in
// for it to run the pipelines without root.
type Runtime interface {
	// Name is the runtime's short name, as config.dump records it.
	Name() string
	State(ctx context.Context, id string) (*runc.State, error)
	Pids(ctx context.Context, id string) ([]int, error)
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	Kill(ctx context.Context, id, signal string) error
	Delete(ctx context.Context, id string, force bool) error
	Exec(ctx context.Context, id string, args, env []string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	// Checkpoint has CRIU dump the container into opts.ImagePath.
	Checkpoint(ctx context.Context, id string, opts runc.CheckpointOptions, logFile string) error
	// RunArgs and RestoreArgs are the command lines the monitor runs, so
	// that the container's stdio are its pipes.
	RunArgs(id, bundle, pidFile, logFile string) []string
	RestoreArgs(id string, opts runc.RestoreOptions) []string
}
