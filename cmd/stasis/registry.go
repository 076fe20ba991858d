package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stasis-dev/stasis/pkg/progress"
	"github.com/stasis-dev/stasis/pkg/registry"
)

// registryFlags adds the flags of every command that may talk to a
// registry; progress goes to the terminal when there is one.
func registryFlags(f *pflag.FlagSet, o *registry.Options) {
	f.BoolVar(&o.TLSVerify, "tls-verify", true, "require HTTPS and a trusted certificate from the registry")
	f.StringVar(&o.Creds, "creds", "", "USER:PASSWORD for the registry (default: ~/.docker/config.json)")
	o.Progress = progress.Terminal()
}

func pullCmd(g *globals) *cobra.Command {
	var o registry.Options
	cmd := &cobra.Command{
		Use:   "pull REFERENCE",
		Short: "Pull an image (a run image or a checkpoint image) from a registry",
		Long: `Pull fetches an image from an OCI registry into the local store under its
reference. Blobs the store already has are not fetched again; every blob is
checked against its digest, and an interrupted or failed pull leaves the
store as it was. A checkpoint image's signature (cosign's sha256-<digest>.sig
tag beside it), when the registry has one, comes along.`,
		Example: `  stasis pull registry.example.com/app:1
  stasis pull --tls-verify=false --creds me:secret 127.0.0.1:5000/app:1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			i, err := e.Pull(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			fmt.Println(i.ID)
			return nil
		},
	}
	registryFlags(cmd.Flags(), &o)
	return cmd
}

func pushCmd(g *globals) *cobra.Command {
	var o registry.Options
	cmd := &cobra.Command{
		Use:   "push IMAGE [DESTINATION]",
		Short: "Push an image from the local store to a registry",
		Long: `Push sends a stored image (a run image or a checkpoint image) to the
registry its name (or DESTINATION) names. Blobs the registry already has
are not sent again. A checkpoint image's signature ('stasis image sign')
goes along, as cosign stores it.`,
		Example: `  stasis push 127.0.0.1:5000/ckpt/web:v1
  stasis push localhost/app:1 registry.example.com/team/app:1`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			dest := ""
			if len(args) == 2 {
				dest = args[1]
			}
			_, err = e.Push(cmd.Context(), args[0], dest, o)
			return err
		},
	}
	registryFlags(cmd.Flags(), &o)
	return cmd
}
