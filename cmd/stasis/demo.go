package main

import (
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/internal/demo"
	"github.com/stasis-dev/stasis/pkg/engine"
)

func demoCmd(g *globals) *cobra.Command {
	var warmup time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a slow program cold, checkpoint it, restore it, compare",
		Long: `demo builds a small image holding a program that spends --warmup building
in-memory state before it is ready, starts it cold and times it to ready,
checkpoints it, restores it and times it to ready again. It works in a
temporary root of its own and removes everything it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			root, err := os.MkdirTemp("/var/tmp", "stasis-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(root)
			run, err := os.MkdirTemp("/run", "stasis-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(run)
			e, err := engine.New(engine.Options{Root: root, RunRoot: run, Runtime: g.runtime})
			if err != nil {
				return err
			}
			return demo.Run(cmd.Context(), e, os.Stdout, warmup)
		},
	}
	cmd.Flags().DurationVar(&warmup, "warmup", 3*time.Second, "how long the sample program takes to start")
	return cmd
}
