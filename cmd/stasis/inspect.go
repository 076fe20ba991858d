package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/inspect"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/store"
)

type inspectFlags struct {
	psTree, cmdline, env, files, sockets, mounts, stats, rootfs, all bool
	pid                                                              uint32
	output                                                           string
	memory                                                           bool
	search, searchRegex                                              string
	context                                                          int
	cat                                                              string
	reg                                                              registry.Options
}

func inspectCmd(g *globals) *cobra.Command {
	var f inspectFlags
	cmd := &cobra.Command{
		Use:   "inspect CHECKPOINT",
		Short: "Look inside a checkpoint: processes, files, sockets, mounts, memory, rootfs",
		Long: `Inspect reads a checkpoint without restoring it. CHECKPOINT is an archive file
(stasis', Podman's, CRI-O's, the kubelet's; plain or compressed), a stored
checkpoint's ID, a container (its latest stored checkpoint) or a checkpoint
image.

Without flags it prints a summary. --output json gives a stable document for
scripts (fields are added, never renamed or removed).`,
		Example: `  stasis inspect web.tar.zst
  stasis inspect web.tar.zst --ps-tree --cmdline --files --sockets
  stasis inspect web --memory --pid 1 --search 'password='
  stasis inspect web --memory --pid 1 --search-regex 'tok_[a-z0-9]{16}' --context 32
  stasis inspect web --cat /etc/app.conf`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.output != "tree" && f.output != "json" {
				return fmt.Errorf("--output %q: want tree or json", f.output)
			}
			if (f.search != "" || f.searchRegex != "") && !f.memory {
				f.memory = true
			}
			if f.memory && (f.search == "") == (f.searchRegex == "") {
				return errors.New("--memory needs one of --search or --search-regex")
			}
			if f.memory && f.pid == 0 {
				return errors.New("--memory needs --pid (see --ps-tree for the pids)")
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			c, done, err := e.OpenCheckpoint(cmd.Context(), args[0], f.reg)
			if err != nil {
				return err
			}
			defer done()
			if f.cat != "" {
				return c.Cat(os.Stdout, f.cat, e.BaseRootfs(c))
			}
			r, err := report(c, f)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(r)
			}
			inspect.WriteTree(os.Stdout, r)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.psTree, "ps-tree", false, "the process tree")
	fl.BoolVar(&f.cmdline, "cmdline", false, "each process's command line (implies --ps-tree)")
	fl.BoolVar(&f.env, "env", false, "each process's environment (implies --ps-tree)")
	fl.BoolVar(&f.files, "files", false, "each process's open files (implies --ps-tree)")
	fl.BoolVar(&f.sockets, "sockets", false, "each process's sockets (implies --ps-tree)")
	fl.BoolVar(&f.mounts, "mounts", false, "the container's mounts")
	fl.BoolVar(&f.stats, "stats", false, "CRIU's dump statistics")
	fl.BoolVar(&f.rootfs, "rootfs", false, "files the container changed and deleted")
	fl.BoolVar(&f.all, "all", false, "every section above")
	fl.Uint32Var(&f.pid, "pid", 0, "only this process (a pid inside the container)")
	fl.StringVarP(&f.output, "output", "o", "tree", "tree or json")
	fl.BoolVar(&f.memory, "memory", false, "search the memory of --pid")
	fl.StringVar(&f.search, "search", "", "a string to find in memory")
	fl.StringVar(&f.searchRegex, "search-regex", "", "a regular expression (RE2) to find in memory")
	fl.IntVar(&f.context, "context", 32, "bytes shown either side of a memory match")
	fl.StringVar(&f.cat, "cat", "", "print this file as it was in the container at checkpoint time")
	registryFlags(fl, &f.reg)
	return cmd
}

func report(c *inspect.Checkpoint, f inspectFlags) (*inspect.Report, error) {
	r, err := c.Summary()
	if err != nil {
		return nil, err
	}
	if f.all {
		f.psTree, f.cmdline, f.env, f.files, f.sockets, f.mounts, f.stats, f.rootfs = true, true, true, true, true, true, true, true
	}
	if f.psTree || f.cmdline || f.env || f.files || f.sockets || f.pid != 0 && !f.memory {
		if r.Processes, err = c.Processes(inspect.ProcessOptions{
			Cmdline: f.cmdline, Env: f.env, Files: f.files, Sockets: f.sockets, Pid: f.pid,
		}); err != nil {
			return nil, err
		}
	}
	if f.mounts {
		if r.Mounts, err = c.Mounts(); err != nil {
			return nil, err
		}
	}
	if f.stats {
		if r.Stats, err = c.Stats(); err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
	}
	if f.rootfs {
		if r.Rootfs, err = c.Rootfs(); err != nil {
			return nil, err
		}
	}
	if f.memory {
		pattern, isRegex := f.search, false
		if f.searchRegex != "" {
			pattern, isRegex = f.searchRegex, true
		}
		if r.Matches, err = c.SearchMemory(f.pid, pattern, isRegex, f.context); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func diffCmd(g *globals) *cobra.Command {
	var output string
	var reg registry.Options
	cmd := &cobra.Command{
		Use:   "diff CHECKPOINT-A CHECKPOINT-B",
		Short: "Compare two checkpoints: processes, files, sockets, memory size, rootfs",
		Example: `  stasis diff web-1.tar.zst web-2.tar.zst
  stasis diff 20261127T101500Z-1a2b3c4d 20261127T103000Z-5e6f7a8b --output json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "tree" && output != "json" {
				return fmt.Errorf("--output %q: want tree or json", output)
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			var reports [2]*inspect.Report
			for i, a := range args {
				c, done, err := e.OpenCheckpoint(cmd.Context(), a, reg)
				if err != nil {
					return err
				}
				reports[i], err = report(c, inspectFlags{cmdline: true, files: true, sockets: true, rootfs: true})
				done()
				if err != nil {
					return fmt.Errorf("%s: %w", a, err)
				}
			}
			d := inspect.Compare(reports[0], reports[1])
			d.A, d.B = args[0], args[1]
			if output == "json" {
				return printJSON(d)
			}
			inspect.WriteDiff(os.Stdout, d)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "tree", "tree or json")
	registryFlags(cmd.Flags(), &reg)
	return cmd
}

func historyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history CONTAINER",
		Short: "A container's stored checkpoints, oldest first, numbered for rewind",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			key := args[0]
			if c, err := e.Get(cmd.Context(), args[0]); err == nil {
				key = c.ID
			}
			h, err := e.History(key)
			if err != nil {
				return err
			}
			if len(h) == 0 {
				return fmt.Errorf("%s has no stored checkpoints", args[0])
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "#\tCHECKPOINT\tCREATED\tSIZE\tPROCESSES\tMEMORY\tROOTFS")
			var prev *store.Summary
			for i, ent := range h {
				procs, mem, rootfs := "-", "-", "-"
				if s := ent.Summary; s != nil {
					procs, mem, rootfs = strconv.Itoa(s.Processes), humanSize(s.MemoryBytes), "changes"
					if prev != nil {
						procs += fmt.Sprintf(" (%+d)", s.Processes-prev.Processes)
						mem += fmt.Sprintf(" (%+d KiB)", (s.MemoryBytes-prev.MemoryBytes)/1024)
						switch {
						case s.RootfsDigest == "" || prev.RootfsDigest == "":
							rootfs = "-" // not a timeline entry: no digest taken
						case s.RootfsDigest == prev.RootfsDigest:
							rootfs = "same"
						default:
							rootfs = "changed"
						}
					}
					prev = s
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", i+1, ent.ID, ent.Created.Format("2006-01-02 15:04:05"),
					humanSize(ent.Size), procs, mem, rootfs)
			}
			return w.Flush()
		},
	}
}

func rewindCmd(g *globals) *cobra.Command {
	var to int
	var o engine.RestoreOptions
	cmd := &cobra.Command{
		Use:   "rewind CONTAINER --to N",
		Short: "Stop a container and restore it from entry N of its history",
		Example: `  stasis history web
  stasis rewind web --to 3`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("to") {
				return errors.New("rewind needs --to N (see 'stasis history " + args[0] + "')")
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			res, err := e.Rewind(cmd.Context(), args[0], to, o)
			if err != nil {
				return err
			}
			fmt.Println(strings.TrimSpace(res.ID))
			return nil
		},
	}
	cmd.Flags().IntVar(&to, "to", 0, "history entry to go back to (1 is the oldest)")
	cmd.Flags().BoolVar(&o.TCPEstablished, "tcp-established", false, "restore established TCP connections")
	cmd.Flags().BoolVar(&o.FileLocks, "file-locks", false, "restore file locks")
	return cmd
}
