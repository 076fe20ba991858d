package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/runc"
)

func runCmd(g *globals) *cobra.Command {
	var o engine.RunOptions
	var volumes []string
	var detach bool
	var labels []string
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Run a command in a new container, in the background",
		Long: `Run creates a container from IMAGE on an overlay rootfs and starts it with the
OCI runtime. Containers always run in the background; read their output with
'stasis logs'. Network "none" gives the container its own network namespace
with only loopback; "host" shares the host's.`,
		Example: `  stasis run -d --name web -e K=V -v /srv/data:/data localhost/app:1 /app/server --flag`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			o.Image, o.Args = args[0], args[1:]
			for _, v := range volumes {
				m, err := runc.ParseMount(v)
				if err != nil {
					return err
				}
				o.Volumes = append(o.Volumes, m)
			}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("invalid label %q: want KEY=VALUE", l)
				}
				if o.Labels == nil {
					o.Labels = map[string]string{}
				}
				o.Labels[k] = v
			}
			c, err := e.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Println(c.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // flags after the image belong to the command
	f.StringVar(&o.Name, "name", "", "container name (default: generated)")
	f.StringArrayVarP(&o.Env, "env", "e", nil, "set an environment variable (K=V)")
	f.StringArrayVarP(&volumes, "volume", "v", nil, "bind mount HOST:CONTAINER[:ro]")
	f.StringVarP(&o.Workdir, "workdir", "w", "", "working directory inside the container")
	f.StringVarP(&o.User, "user", "u", "", "user (name, uid or uid:gid) to run as")
	f.StringVar(&o.Network, "network", runc.NetworkNone, "network mode: none or host")
	f.StringArrayVarP(&labels, "label", "l", nil, "set a label KEY=VALUE (stasis.dev/checkpoint=never opts out of checkpoints, stasis.dev/migrate=never of exports)")
	f.BoolVarP(&detach, "detach", "d", true, "run in the background (the only mode)")
	return cmd
}

func psCmd(g *globals) *cobra.Command {
	var quiet, all bool
	var format string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List containers (running ones; all with -a)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if c, err := g.client(); c != nil || err != nil {
				if err != nil {
					return err
				}
				if format != "" {
					return errors.New("--format is not available through an agent yet")
				}
				return remotePs(cmd.Context(), c, all)
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			list, err := e.List(cmd.Context())
			if err != nil {
				return err
			}
			var shown []*engine.Container
			for _, c := range list {
				if all || c.Running() {
					shown = append(shown, c)
				}
			}
			if quiet {
				for _, c := range shown {
					fmt.Println(c.ID)
				}
				return nil
			}
			var js []psJSON
			var rows []psRow
			for _, c := range shown {
				js, rows = append(js, psJSONOf(c)), append(rows, psRowOf(c))
			}
			return printList(format, js, rows, func() error {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "CONTAINER ID\tNAME\tIMAGE\tCOMMAND\tCREATED\tSTATUS")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID[:12], r.Names, r.Image, truncate(r.Command, 30), r.Created, r.Status)
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print IDs only")
	cmd.Flags().BoolVarP(&all, "all", "a", false, "list every container, not only running ones")
	cmd.Flags().StringVar(&format, "format", "", formatFlag)
	return cmd
}

// psRow is a container as --format templates see it, in Podman's names.
type psRow struct {
	ID, Names, Image, ImageID, Command, Created, State, Status string
	Labels                                                     map[string]string
}

func psRowOf(c *engine.Container) psRow {
	return psRow{ID: c.ID, Names: c.Name, Image: c.Image, ImageID: c.ImageID, Command: strings.Join(c.Args, " "),
		Created: ago(c.Created), State: string(c.Status), Status: c.Describe(), Labels: c.Labels}
}

// psJSON is a container in `ps --format json`, in Podman's keys.
type psJSON struct {
	ID           string            `json:"Id"`
	Names        []string          `json:"Names"`
	Image        string            `json:"Image"`
	ImageID      string            `json:"ImageID"`
	Command      []string          `json:"Command"`
	Created      int64             `json:"Created"`
	CreatedAt    string            `json:"CreatedAt"`
	State        string            `json:"State"`
	Status       string            `json:"Status"`
	Pid          int               `json:"Pid"`
	ExitCode     *int              `json:"ExitCode,omitempty"`
	Labels       map[string]string `json:"Labels,omitempty"`
	Restored     bool              `json:"Restored"`
	Checkpointed *time.Time        `json:"CheckpointedAt,omitempty"`
}

func psJSONOf(c *engine.Container) psJSON {
	j := psJSON{ID: c.ID, Names: []string{c.Name}, Image: c.Image, ImageID: c.ImageID, Command: c.Args,
		Created: c.Created.Unix(), CreatedAt: c.Created.Format(time.RFC3339), State: string(c.Status), Status: c.Describe(),
		Pid: c.Pid, ExitCode: c.ExitCode, Labels: c.Labels, Restored: c.Restored}
	if !c.Checkpointed.IsZero() {
		j.Checkpointed = &c.Checkpointed
	}
	return j
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func logsCmd(g *globals) *cobra.Command {
	var o engine.LogsOptions
	cmd := &cobra.Command{
		Use:   "logs [flags] CONTAINER",
		Short: "Print a container's output",
		Long: `Print a container's output: stdout and stderr as it wrote them. With
--follow, keep printing what it writes until it stops running (or until
interrupted).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			return e.Logs(cmd.Context(), args[0], os.Stdout, o)
		},
	}
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "keep printing what the container writes until it stops running")
	cmd.Flags().IntVarP(&o.Tail, "tail", "n", 0, "print only the last N lines (0: all)")
	return cmd
}

func execCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec CONTAINER COMMAND [ARG...]",
		Short: "Run a command in a running container",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			code, err := e.Exec(cmd.Context(), args[0], args[1:], os.Stdin, os.Stdout, os.Stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError(code)
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func stopCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var all, ignore bool
	cmd := &cobra.Command{
		Use:   "stop [flags] CONTAINER...",
		Short: "Stop containers (SIGTERM, then SIGKILL after --time)",
		Long: `Stop containers: SIGTERM, then SIGKILL after --time. As Podman does, every
container named is tried; each one stopped is printed, each failure
reported, and the command exits 1 if any failed.`,
		Args: targetArgs(&all, nil),
		RunE: eachArg(g, &all, (*engine.Container).Running,
			func(ctx context.Context, e *engine.Engine, a string) error {
				return e.Stop(ctx, a, timeout)
			}, ignoreMissing(&ignore)),
	}
	cmd.Flags().DurationVarP(&timeout, "time", "t", 10*time.Second, "how long to wait after SIGTERM")
	cmd.Flags().BoolVarP(&all, "all", "a", false, "stop every running container")
	cmd.Flags().BoolVarP(&ignore, "ignore", "i", false, "a container that does not exist is no error")
	return cmd
}

func rmCmd(g *globals) *cobra.Command {
	var force, all, ignore bool
	cmd := &cobra.Command{
		Use:   "rm [flags] CONTAINER...",
		Short: "Remove containers (their checkpoints stay in the store)",
		Long: `Remove containers; their checkpoints stay in the store. As Podman does,
every container named is tried; each one removed is printed, each failure
reported, and the command exits 1 if any failed. With --force, a running
container is killed first and a name that does not exist is no error, so
that one 'rm -f' cleans up whatever is there.`,
		Args: targetArgs(&all, nil),
		RunE: eachArg(g, &all, nil, func(ctx context.Context, e *engine.Engine, a string) error {
			return e.Remove(ctx, a, force)
		}, func(err error) bool { return (force || ignore) && errors.Is(err, engine.ErrNotFound) }),
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running container first; a container that does not exist is no error")
	cmd.Flags().BoolVarP(&all, "all", "a", false, "remove every container")
	cmd.Flags().BoolVarP(&ignore, "ignore", "i", false, "a container that does not exist is no error")
	return cmd
}

// targetArgs takes container names, or none with --all or --latest (when
// latest is not nil).
func targetArgs(all, latest *bool) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case *all && latest != nil && *latest:
			return errors.New("give --all or --latest, not both")
		case *all || latest != nil && *latest:
			if len(args) > 0 {
				return errors.New("give container names or --all/--latest, not both")
			}
			return nil
		}
		return cobra.MinimumNArgs(1)(cmd, args)
	}
}

// targets are the containers a command acts on: args; with all, the
// engine's containers that pick selects (every one when pick is nil); with
// latest, the one created last.
func targets(ctx context.Context, e *engine.Engine, args []string, all, latest bool, pick func(*engine.Container) bool) ([]string, error) {
	if !all && !latest {
		return args, nil
	}
	list, err := e.List(ctx)
	if err != nil {
		return nil, err
	}
	if latest { // List is in the order of creation
		if len(list) == 0 {
			return nil, errors.New("--latest: there is no container")
		}
		return []string{list[len(list)-1].Name}, nil
	}
	var names []string
	for _, c := range list {
		if pick == nil || pick(c) {
			names = append(names, c.Name)
		}
	}
	return names, nil
}

// eachName runs fn for each name as Podman's commands do: every one is
// tried, each failure reported, and the command exits 1 at the end if any
// failed (a script's one `rm -f a b` must not leave b running because a
// is gone).
func eachName(names []string, fn func(name string) error) error {
	failed := false
	for _, n := range names {
		if err := fn(n); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
			failed = true
		}
	}
	if failed {
		return exitError(1)
	}
	return nil
}

func ignoreMissing(ignore *bool) func(error) bool {
	return func(err error) bool { return *ignore && errors.Is(err, engine.ErrNotFound) }
}

// eachArg is the body of commands that act on each argument in turn
// (eachName), printing each one done; with *all (when all is not nil), on
// the containers pick selects (targets). skip says which errors are no
// failure.
func eachArg(g *globals, all *bool, pick func(*engine.Container) bool, fn func(ctx context.Context, e *engine.Engine, arg string) error,
	skip func(error) bool) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		e, err := g.engine()
		if err != nil {
			return err
		}
		names, err := targets(cmd.Context(), e, args, all != nil && *all, false, pick)
		if err != nil {
			return err
		}
		return eachName(names, func(a string) error {
			err := fn(cmd.Context(), e, a)
			if err == nil {
				fmt.Println(a)
			}
			if skip != nil && skip(err) {
				return nil
			}
			return err
		})
	}
}
