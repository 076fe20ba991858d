package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/provenance"
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
			i, err := e.Images.Add(args[1], img, nil)
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			fmt.Println(i.ID)
			return nil
		},
	})
	var imageKeys []string
	build := &cobra.Command{
		Use:   "build ARCHIVE NAME",
		Short: "Make a checkpoint image of a checkpoint archive (stasis', Podman's, CRI-O's, the kubelet's)",
		Long: `Build stores a checkpoint archive as a checkpoint image: one layer that is the
archive as it is (no recompression), annotated so that CRI-O, Podman and
containerd recognise it. Push it with 'stasis push NAME'.`,
		Example: `  stasis image build web.tar.zst 127.0.0.1:5000/ckpt/web:v1`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			keys, err := readKeys(imageKeys)
			if err != nil {
				return err
			}
			i, err := e.BuildCheckpointImage(args[0], args[1], false, keys)
			if err != nil {
				return err
			}
			fmt.Println(i.ID)
			return nil
		},
	}
	build.Flags().StringArrayVar(&imageKeys, "encrypt-image-key", nil, "encrypt the layer for this public key (PEM, RSA or EC; repeatable), as ocicrypt does")
	cmd.AddCommand(build, imageSignCmd(g), rmiCmd(g, "rm"))
	return cmd
}

// rmiCmd is both `stasis rmi` and `stasis image rm`.
func rmiCmd(g *globals, use string) *cobra.Command {
	var ignore bool
	cmd := &cobra.Command{
		Use:   use + " [flags] IMAGE...",
		Short: "Remove images from the local store (blobs no other image uses go too)",
		Long: `Remove images from the local store; blobs no other image uses go too. As
Podman does, every image named is tried; each one removed is printed, each
failure reported, and the command exits 1 if any failed.`,
		Args: cobra.MinimumNArgs(1),
		RunE: eachArg(g, nil, nil, func(ctx context.Context, e *engine.Engine, a string) error {
			return e.RemoveImage(ctx, a)
		}, func(err error) bool { return ignore && errors.Is(err, image.ErrNotFound) }),
	}
	cmd.Flags().BoolVarP(&ignore, "ignore", "i", false, "an image that does not exist is no error")
	return cmd
}

func imagesCmd(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
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
			names := map[string]bool{}
			for _, i := range list {
				names[i.Name] = true
			}
			var js []imageJSON
			var rows []imageRow
			for _, i := range list {
				if provenance.IsSignature(i.Name) {
					continue // shown on its image
				}
				j := imageJSON{ID: i.ID, Names: []string{i.Name}, Digest: i.Digest, Created: i.Created.Unix(),
					CreatedAt: i.Created.Format(time.RFC3339), Size: i.Size}
				r := imageRow{ID: i.ID[:12], Names: i.Name, Digest: i.Digest, Created: ago(i.Created), Size: humanSize(i.Size), CheckpointOf: "-"}
				if info, ok := checkpointimage.Read(i.Annotations); ok {
					j.Checkpoint = &imageCheckpoint{Container: info.Container, BaseImage: info.BaseImage, Signed: names[engine.SignatureName(i)]}
					r.CheckpointOf = fmt.Sprintf("%s (image %s)", info.Container, info.BaseImage)
					if j.Checkpoint.Signed {
						r.CheckpointOf += ", signature stored" // checked when it is restored
					}
				}
				js, rows = append(js, j), append(rows, r)
			}
			return printList(format, js, rows, func() error {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tIMAGE ID\tCREATED\tSIZE\tCHECKPOINT OF")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Names, r.ID, r.Created, r.Size, r.CheckpointOf)
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", "", formatFlag)
	return cmd
}

// imageRow is an image as --format templates see it.
type imageRow struct{ ID, Names, Digest, Created, Size, CheckpointOf string }

// imageJSON is an image in `images --format json`, in Podman's keys, and
// what a checkpoint image is a checkpoint of.
type imageJSON struct {
	ID         string           `json:"Id"`
	Names      []string         `json:"Names"`
	Digest     string           `json:"Digest"`
	Created    int64            `json:"Created"`
	CreatedAt  string           `json:"CreatedAt"`
	Size       int64            `json:"Size"`
	Checkpoint *imageCheckpoint `json:"Checkpoint,omitempty"`
}

type imageCheckpoint struct {
	Container string `json:"Container"`
	BaseImage string `json:"BaseImage"`
	// Signed says a signature image is stored beside it.
	Signed bool `json:"Signed"`
}

// readKeys reads PEM key files.
func readKeys(files []string) ([][]byte, error) {
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}
