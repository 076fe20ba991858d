// Command stasis runs containers and checkpoints, restores and migrates
// them with CRIU. This package only parses flags and prints; the work is
// done in pkg/engine and the packages it composes.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	units "github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/internal/demo"
	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/criu"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/monitor"
	"github.com/stasis-dev/stasis/pkg/provenance"
	"github.com/stasis-dev/stasis/pkg/wire"
)

type globals struct {
	root, runRoot, runtime     string
	identities, decryptionKeys []string
	// maxUnpack is --max-unpack as given ("" for the default).
	maxUnpack string
	// host is an agent to work through (see remote.go).
	host     string
	hostOpts wire.ClientOptions
	// trust is the agent's (--signing-key, --trusted-key); nil elsewhere.
	trust *provenance.Trust
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("stasis must run as root (CRIU and runc need it)")
	}
	return nil
}

// engine is stasis working alone on this machine; commands the agent
// serves ask g.client first, so here --host means the command has no
// remote form.
func (g *globals) engine() (*engine.Engine, error) {
	if g.host != "" {
		return nil, fmt.Errorf("this command works on this machine only, not through --host")
	}
	if err := requireRoot(); err != nil {
		return nil, err
	}
	ids, err := archive.ReadIdentities(g.identities)
	if err != nil {
		return nil, err
	}
	keys, err := readKeys(g.decryptionKeys)
	if err != nil {
		return nil, err
	}
	maxUnpack, err := parseSize("--max-unpack", g.maxUnpack)
	if err != nil {
		return nil, err
	}
	return engine.New(engine.Options{Root: g.root, RunRoot: g.runRoot, Runtime: g.runtime, Identities: ids, DecryptionKeys: keys,
		MaxUnpack: maxUnpack, Trust: g.trust})
}

func main() {
	// Hidden re-exec entry points: the per-container monitor, the lazy-pages
	// helper and the demo's sample program. They bypass cobra so nothing else runs in them.
	if len(os.Args) == 3 && os.Args[1] == monitor.Command {
		monitor.Main(os.Args[2])
	}
	if len(os.Args) == 2 && os.Args[1] == criu.LazyPagesCommand {
		os.Exit(engine.LazyPagesMain())
	}
	if len(os.Args) >= 2 && os.Args[1] == demo.SampleCommand {
		os.Exit(demo.Sample(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		if _, said := err.(exitError); !said {
			fmt.Fprintln(os.Stderr, "Error:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitError is an exit status whose reason was said already (a command
// run by exec, each failure of rm): main prints nothing more.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func exitCode(err error) int {
	if e, ok := err.(exitError); ok {
		return int(e)
	}
	return 1
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "stasis",
		Short: "Run containers, checkpoint them with CRIU, restore them anywhere",
		Long: `stasis runs OCI containers with runc and freezes them with CRIU into portable
checkpoint archives (the layout Podman and CRI-O use), then restores them from
exactly that point: in place, under a new name, or on another machine.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.root, "root", "/var/lib/stasis", "directory for images, containers and checkpoints")
	root.PersistentFlags().StringVar(&g.runRoot, "runroot", "/run/stasis", "directory for runtime state")
	root.PersistentFlags().StringVar(&g.runtime, "runtime", "runc", "OCI runtime binary (runc or crun)")
	root.PersistentFlags().StringArrayVar(&g.identities, "identity", nil, "age identity file that opens encrypted checkpoints (repeatable)")
	root.PersistentFlags().StringArrayVar(&g.decryptionKeys, "decryption-key", nil, "private key (PEM) that opens encrypted checkpoint images (repeatable)")
	root.PersistentFlags().StringVar(&g.maxUnpack, "max-unpack", "", "most that unpacking one checkpoint may write (512m, 20g; default and upper bound: the free space of the filesystem less 5%)")
	root.PersistentFlags().StringVar(&g.host, "host", "", "work through the agent at https://HOST:PORT (ps, checkpoints, checkpoint, restore)")
	root.PersistentFlags().StringVar(&g.hostOpts.CA, "host-ca", "", "CA that signed the agent's certificate (PEM)")
	root.PersistentFlags().StringVar(&g.hostOpts.Cert, "host-cert", "", "client certificate for the agent (PEM)")
	root.PersistentFlags().StringVar(&g.hostOpts.Key, "host-key", "", "its private key (PEM)")
	root.PersistentFlags().StringVar(&g.hostOpts.Token, "host-token", "", "bearer token for the agent (default: $STASIS_TOKEN)")
	root.AddCommand(
		imageCmd(g), imagesCmd(g), runCmd(g), psCmd(g), logsCmd(g), execCmd(g), stopCmd(g), rmCmd(g),
		checkpointCmd(g), checkpointsCmd(g), restoreCmd(g), pullCmd(g), pushCmd(g), rmiCmd(g, "rmi"),
		inspectCmd(g), diffCmd(g), historyCmd(g), rewindCmd(g), agentCmd(g), demoCmd(g), keyCmd(),
	)
	return root
}

// parseSize reads a size as Podman does (go-units: 512m, 20g, or bytes);
// "" is 0, the default.
func parseSize(flag, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := units.RAMInBytes(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s %q: want a size such as 512m or 20g", flag, s)
	}
	return n, nil
}
