package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/image"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images in the local store"}
	cmd.AddCommand(&cobra.Command{
		Use:   "import SOURCE NAME",
		Short: "Import an image from a rootfs tar, an OCI layout directory, or an oci-archive/docker-archive tarball",
		Example: `  stasis image import ./rootfs.tar localhost/app:1
  stasis image import ./oci-layout-dir localhost/app:2`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			img, cleanup, err := image.Load(args[0])
			defer cleanup()
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			i, err := e.Images.Add(args[1], img)
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			fmt.Println(i.ID)
			return nil
		},
	})
	return cmd
}

func imagesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "images",
		Short: "List images in the local store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			list, err := e.Images.List()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tIMAGE ID\tCREATED\tSIZE")
			for _, i := range list {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", i.Name, i.ID[:12], ago(i.Created), humanSize(i.Size))
			}
			return w.Flush()
		},
	}
}
