package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/checkpointimage"
	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/runc"
	"github.com/stasis-dev/stasis/pkg/wire"
)

func checkpointCmd(g *globals) *cobra.Command {
	var o engine.CheckpointOptions
	var encryptTo, imageKeys []string
	var tl engine.TimelineOptions
	var compression string
	var stats, all, latest bool
	cmd := &cobra.Command{
		Use:   "checkpoint [flags] CONTAINER...",
		Short: "Checkpoint a running container with CRIU",
		Long: `Checkpoint freezes the container, dumps its processes with CRIU and writes one
archive holding the CRIU images, the rootfs changes and the container's
configuration (the layout Podman and CRI-O use, readable by checkpointctl).

Without --export the archive is kept in stasis' store ('stasis checkpoints').
With --create-image it becomes a checkpoint image instead: an OCI image whose
one layer is the archive, with the annotations CRI-O, Podman and containerd
look for; --push sends it to its registry. Without --leave-running the
container is stopped after the dump. If the dump fails, the container keeps
running and no archive is left behind.

Several containers (or --all, --latest) are checkpointed one after the
other into the store, as Podman does: each one is tried, each failure
reported, and the command exits 1 if any failed. A pod's containers are
checkpointed as one moment by the agent (see docs/kubernetes.md).`,
		Example: `  stasis checkpoint web --export web.tar.zst --leave-running
  stasis checkpoint --all --leave-running
  stasis checkpoint web
  stasis checkpoint web --create-image registry.example.com/ckpt/web:v1 --push
  stasis checkpoint web --every 30s --keep 10      # a timeline; see 'stasis history' and 'stasis rewind'`,
		Args: targetArgs(&all, &latest),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Export != "" || o.CreateImage != "" || cmd.Flags().Changed("every") {
				if len(args) != 1 || all || latest {
					return fmt.Errorf("--export, --create-image and --every take one container, named")
				}
			}
			if c, err := g.client(); c != nil || err != nil {
				if err != nil {
					return err
				}
				if o.Export != "" || cmd.Flags().Changed("every") {
					return fmt.Errorf("--export and --every work on this machine only, not through --host")
				}
				if all || latest || o.IgnoreRootfs {
					return fmt.Errorf("--all, --latest and --ignore-rootfs work on this machine only, not through --host")
				}
				return eachName(args, func(name string) error {
					return remoteCheckpoint(cmd.Context(), c, name, wire.CheckpointRequest{
						LeaveRunning: o.LeaveRunning, Compression: compression, TCPEstablished: o.TCPEstablished,
						FileLocks: o.FileLocks, CreateImage: o.CreateImage, Push: o.Push, EncryptTo: encryptTo,
					}, stats)
				})
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			if o.Recipients, err = archive.ParseRecipients(encryptTo); err != nil {
				return err
			}
			if o.ImageKeys, err = readKeys(imageKeys); err != nil {
				return err
			}
			if len(o.ImageKeys) > 0 && o.CreateImage == "" {
				return fmt.Errorf("--encrypt-image-key needs --create-image")
			}
			if cmd.Flags().Changed("compress") {
				if o.Compression, err = archive.ParseCompression(compression); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("every") {
				tl.CheckpointOptions = o
				return e.Timeline(cmd.Context(), args[0], tl, func(r *engine.CheckpointResult) {
					fmt.Println(r.StoreID)
				})
			}
			names, err := targets(cmd.Context(), e, args, all, latest, (*engine.Container).Running)
			if err != nil {
				return err
			}
			return eachName(names, func(name string) error {
				res, err := e.Checkpoint(cmd.Context(), name, o)
				if err != nil {
					return err
				}
				switch {
				case stats:
					return printJSON(res)
				case res.Image != "":
					fmt.Println(res.Image)
				default:
					fmt.Println(res.Archive)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Export, "export", "e", "", "write the archive to this file instead of the store")
	f.StringVar(&o.CreateImage, "create-image", "", "store the checkpoint as this checkpoint image instead")
	f.BoolVar(&o.Push, "push", false, "push the --create-image image to its registry")
	registryFlags(f, &o.Registry)
	f.StringVarP(&compression, "compress", "c", "zstd", "archive compression: zstd, gzip or none (default from --export's suffix)")
	f.BoolVarP(&o.LeaveRunning, "leave-running", "R", false, "keep the container running after the checkpoint")
	f.BoolVar(&o.TCPEstablished, "tcp-established", false, "checkpoint established TCP connections")
	f.BoolVar(&o.FileLocks, "file-locks", false, "checkpoint file locks")
	f.StringArrayVar(&imageKeys, "encrypt-image-key", nil, "with --create-image: encrypt the layer for this public key (PEM; repeatable), as ocicrypt does")
	f.StringArrayVar(&encryptTo, "encrypt-to", nil, "encrypt the archive to this age recipient (age1... key, or a file of them; repeatable); restore then needs --identity")
	f.BoolVar(&stats, "print-stats", false, "print CRIU's and stasis' timings as JSON")
	f.DurationVar(&tl.Every, "every", 0, "keep checkpointing (leaving it running) at this interval, until interrupted")
	f.IntVar(&tl.Keep, "keep", 10, "with --every: how many of the newest checkpoints to keep")
	f.IntVar(&tl.Count, "count", 0, "with --every: stop after this many checkpoints")
	f.BoolVar(&o.IgnoreRootfs, "ignore-rootfs", false, "leave the container's file changes out of the checkpoint (a restore runs on the image as it is)")
	f.BoolVarP(&all, "all", "a", false, "checkpoint every running container")
	f.BoolVarP(&latest, "latest", "l", false, "checkpoint the container created last")
	return cmd
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkpointsCmd(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "checkpoints",
		Short: "List checkpoints: archives in the store and checkpoint images",
		Long: `Checkpoints lists every checkpoint stasis holds: archives kept in its store
(restore them with 'stasis restore CONTAINER') and checkpoint images in the
image store (restore them with 'stasis restore IMAGE').`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if c, err := g.client(); c != nil || err != nil {
				if err != nil {
					return err
				}
				if format != "" {
					return errors.New("--format is not available through an agent yet")
				}
				return remoteCheckpoints(cmd.Context(), c)
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			list, err := e.Checkpoints.List()
			if err != nil {
				return err
			}
			images, err := e.Images.List()
			if err != nil {
				return err
			}
			var js []checkpointJSON
			for _, c := range list {
				js = append(js, checkpointJSON{ID: c.ID, Kind: "store", Container: c.ContainerName, Image: c.Image,
					Created: c.Created, Size: c.Size, Digest: c.Digest})
			}
			for _, i := range images {
				if info, ok := checkpointimage.Read(i.Annotations); ok {
					js = append(js, checkpointJSON{ID: i.Name, Kind: "image", Container: info.Container, Image: info.BaseImage,
						Created: i.Created, Size: i.Size, Digest: i.Digest})
				}
			}
			var rows []checkpointRow
			for _, j := range js {
				rows = append(rows, checkpointRow{ID: j.ID, Kind: j.Kind, Container: j.Container, Image: j.Image,
					Created: ago(j.Created), Size: humanSize(j.Size), Digest: j.Digest})
			}
			return printList(format, js, rows, func() error {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "CHECKPOINT\tCONTAINER\tIMAGE\tCREATED\tSIZE\tDIGEST")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Container, r.Image, r.Created, r.Size, truncate(r.Digest, 19))
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", "", formatFlag)
	return cmd
}

// checkpointJSON is a checkpoint in `checkpoints --format json`: a stored
// archive (Kind "store", ID its store ID) or a checkpoint image (Kind
// "image", ID its name).
type checkpointJSON struct {
	ID        string    `json:"ID"`
	Kind      string    `json:"Kind"`
	Container string    `json:"Container"`
	Image     string    `json:"Image"`
	Created   time.Time `json:"Created"`
	Size      int64     `json:"Size"`
	Digest    string    `json:"Digest"`
}

// checkpointRow is a checkpoint as --format templates see it.
type checkpointRow struct{ ID, Kind, Container, Image, Created, Size, Digest string }

func restoreCmd(g *globals) *cobra.Command {
	var o engine.RestoreOptions
	var stats, all, latest bool
	var volumes []string
	cmd := &cobra.Command{
		Use:   "restore [flags] [CONTAINER... | CHECKPOINT-IMAGE]",
		Short: "Restore a container from a checkpoint",
		Long: `Restore brings a checkpointed container back from exactly where it was.

With CONTAINER, its latest checkpoint in the store is restored in place (or,
with --name, as a copy). With --import, any checkpoint archive is restored:
stasis', Podman's or CRI-O's. A CHECKPOINT-IMAGE is used from the local store
or pulled from its registry. A base image the store lacks is pulled when its
name says where it lives (exactly the checkpointed one, by digest, when the
checkpoint image records it); otherwise import it first.

With --lazy-pages the container runs before its memory is back: CRIU
restores it without its heap, and a helper fills each page on first touch
(userfaultfd) while copying the rest in behind it. A large process answers
far sooner; it cannot be checkpointed again until every page is in.

A checkpoint this machine's store did not make (--import, a checkpoint image,
an upload to the agent) is not trusted to say how it runs: it is restored
with stasis' own defaults (namespaces, capabilities, devices, masked paths),
and its spec.dump is read only for the process and the list of mounts CRIU
must find again. Each of its bind mounts, other than /etc/hosts,
/etc/hostname, /etc/resolv.conf, /dev/shm and /run/.containerenv (stasis
provides those), needs --volume SRC:DST for its destination; --privileged
takes host namespaces, capabilities, devices and seccomp from the
checkpoint as it recorded them. Unpacking stops at --max-unpack.

Several containers (or --all: every checkpointed one; --latest: the one
created last) are restored in place one after the other, as Podman does:
each one is tried, each failure reported, and the command exits 1 if any
failed.`,
		Example: `  stasis restore web
  stasis restore --import web.tar.zst --name web2
  stasis restore --import jvm.tar.zst --lazy-pages
  stasis restore --import db.tar.zst --volume /srv/db:/var/lib/db
  stasis restore registry.example.com/ckpt/web:v1 --name web2`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case (all || latest) && (o.Import != "" || o.Name != ""):
				return errors.New("--all and --latest restore containers in place: no --import, no --name")
			case o.Import != "":
				return cobra.NoArgs(cmd, args)
			case len(args) > 1 && o.Name != "":
				return errors.New("--name names one restored container: give one checkpoint")
			}
			return targetArgs(&all, &latest)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if c, err := g.client(); c != nil || err != nil {
				if err != nil {
					return err
				}
				if o.Import != "" || len(args) != 1 || o.IgnoreRootfs {
					return fmt.Errorf("through --host, name one stored checkpoint, container or checkpoint image (no --import, --all, --latest, --ignore-rootfs)")
				}
				req := wire.RestoreRequest{Checkpoint: args[0], Name: o.Name, LazyPages: o.LazyPages,
					TCPEstablished: o.TCPEstablished, FileLocks: o.FileLocks, Privileged: o.Privileged}
				for _, v := range volumes {
					m, err := runc.ParseMount(v)
					if err != nil {
						return err
					}
					if m.ReadOnly {
						return fmt.Errorf("through --host, a volume takes no :ro (the checkpoint says how it was mounted)")
					}
					if req.Volumes == nil {
						req.Volumes = map[string]string{}
					}
					req.Volumes[m.Destination] = m.Source
				}
				return remoteRestore(cmd.Context(), c, req, stats)
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			for _, v := range volumes {
				m, err := runc.ParseMount(v)
				if err != nil {
					return err
				}
				o.Volumes = append(o.Volumes, m)
			}
			names := []string{""} // --import names no container
			if o.Import == "" {
				names, err = targets(cmd.Context(), e, args, all, latest, func(c *engine.Container) bool {
					return c.Status == engine.StatusCheckpointed
				})
				if err != nil {
					return err
				}
			}
			return eachName(names, func(name string) error {
				o := o
				o.Container = name
				res, err := e.Restore(cmd.Context(), o)
				if err != nil {
					return err
				}
				if stats {
					return printJSON(res)
				}
				fmt.Println(res.ID)
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Import, "import", "i", "", "restore from this archive file")
	f.StringVarP(&o.Name, "name", "n", "", "name of the restored container (default: the checkpointed one)")
	f.BoolVar(&o.TCPEstablished, "tcp-established", false, "restore established TCP connections")
	f.BoolVar(&o.FileLocks, "file-locks", false, "restore file locks")
	f.BoolVar(&o.LazyPages, "lazy-pages", false, "start the container first, bring its memory in on demand (from the archive where it lies when the archive has a frame index, as stasis' zstd archives do)")
	f.StringArrayVarP(&volumes, "volume", "v", nil, "source HOST-PATH for the checkpoint's bind mount at CONTAINER-PATH: HOST-PATH:CONTAINER-PATH[:ro] (repeatable)")
	f.BoolVar(&o.Privileged, "privileged", false, "take host namespaces, capabilities, devices and seccomp from a checkpoint made elsewhere as it recorded them")
	registryFlags(f, &o.Registry)
	f.BoolVar(&stats, "print-stats", false, "print CRIU's and stasis' timings as JSON")
	f.BoolVar(&o.IgnoreRootfs, "ignore-rootfs", false, "restore onto the image as it is, without the file changes the checkpoint carries")
	f.BoolVarP(&all, "all", "a", false, "restore every checkpointed container in place")
	f.BoolVarP(&latest, "latest", "l", false, "restore the container created last")
	return cmd
}
