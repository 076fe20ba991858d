package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/store"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// client is the agent client of --host, or nil when stasis works alone.
func (g *globals) client() (*wire.Client, error) {
	if g.host == "" {
		return nil, nil
	}
	if g.hostOpts.Token == "" {
		g.hostOpts.Token = os.Getenv("STASIS_TOKEN")
	}
	return wire.NewClient(g.host, g.hostOpts)
}

func remotePs(ctx context.Context, c *wire.Client, all bool) error {
	var list []struct {
		ID, Name, Image, Status string
	}
	if err := c.Do(ctx, "GET", "/v1/containers", nil, &list); err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CONTAINER ID\tNAME\tIMAGE\tSTATUS")
	for _, x := range list {
		if all || engine.Status(x.Status).Running() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", truncate(x.ID, 12), x.Name, x.Image, x.Status)
		}
	}
	return w.Flush()
}

func remoteCheckpoints(ctx context.Context, c *wire.Client) error {
	var list []store.Entry
	if err := c.Do(ctx, "GET", "/v1/checkpoints", nil, &list); err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CHECKPOINT\tCONTAINER\tIMAGE\tCREATED\tSIZE")
	for _, e := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.ID, e.ContainerName, e.Image, ago(e.Created), humanSize(e.Size))
	}
	return w.Flush()
}

func remoteCheckpoint(ctx context.Context, c *wire.Client, name string, req wire.CheckpointRequest, stats bool) error {
	var res wire.CheckpointResult
	if err := c.Do(ctx, "POST", "/v1/containers/"+name+"/checkpoint", req, &res); err != nil {
		return err
	}
	if stats {
		return printJSON(res)
	}
	switch {
	case res.Image != "":
		fmt.Println(res.Image)
	case res.StoreID != "":
		fmt.Println(res.StoreID)
	default:
		fmt.Println(res.Archive)
	}
	return nil
}

func remoteRestore(ctx context.Context, c *wire.Client, req wire.RestoreRequest, stats bool) error {
	var res wire.RestoreResult
	if err := c.Do(ctx, "POST", "/v1/restore", req, &res); err != nil {
		return err
	}
	if stats {
		return printJSON(res)
	}
	fmt.Println(res.ID)
	return nil
}
