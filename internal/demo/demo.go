package demo

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stasis-dev/stasis/pkg/engine"
)

// Run builds the sample image in e's store, starts it cold, checkpoints
// it, restores it and reports both times to ready. It removes what it made.
func Run(ctx context.Context, e *engine.Engine, out io.Writer, warmup time.Duration) error {
	img, err := SampleImage()
	if err != nil {
		return err
	}
	if _, err := e.Images.Add("localhost/stasis-demo:latest", img, nil); err != nil {
		return err
	}
	name := fmt.Sprintf("stasis-demo-%d", os.Getpid())
	defer e.Remove(context.WithoutCancel(ctx), name, true)

	fmt.Fprintf(out, "Starting %s cold (it builds its state for %s) ...\n", name, warmup)
	t0 := time.Now()
	if _, err := e.Run(ctx, engine.RunOptions{Name: name, Image: "localhost/stasis-demo:latest",
		Args: []string{"/sample", SampleCommand, "--warmup", warmup.String()}}); err != nil {
		return err
	}
	if _, err := waitLog(ctx, e, name, regexp.MustCompile(`ready after`), 0, 2*warmup+30*time.Second); err != nil {
		return err
	}
	cold := time.Since(t0)
	fmt.Fprintf(out, "  ready after %s\n", cold.Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)

	ck, err := e.Checkpoint(ctx, name, engine.CheckpointOptions{})
	if err != nil {
		return err
	}
	defer e.Checkpoints.Delete(ck.StoreID)
	before, _ := lastTick(ctx, e, name)
	fmt.Fprintf(out, "Checkpointed at tick %d in %s (%s archive)\n", before,
		(time.Duration(ck.Phases["total"]) * time.Microsecond).Round(time.Millisecond), size(ck.Size))

	t1 := time.Now()
	if _, err := e.Restore(ctx, engine.RestoreOptions{Container: name}); err != nil {
		return err
	}
	tick, err := waitLog(ctx, e, name, regexp.MustCompile(`tick (\d+)`), before+1, 30*time.Second)
	if err != nil {
		return err
	}
	warm := time.Since(t1)
	fmt.Fprintf(out, "Restored: tick %d after %s (it went on from tick %d, no warm-up)\n", tick, warm.Round(time.Millisecond), before)
	fmt.Fprintf(out, "\n  cold start to ready:   %8s\n  restore to ready:      %8s\n  speed-up:              %7.1fx\n",
		cold.Round(time.Millisecond), warm.Round(time.Millisecond), float64(cold)/float64(warm))
	return nil
}

func size(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// waitLog polls the container's log until re matches a line whose first
// group is at least min (or any match, without a group).
func waitLog(ctx context.Context, e *engine.Engine, name string, re *regexp.Regexp, min int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var buf bytes.Buffer
		if err := e.Logs(ctx, name, &buf, engine.LogsOptions{}); err != nil {
			return 0, err
		}
		for _, m := range re.FindAllStringSubmatch(buf.String(), -1) {
			if len(m) < 2 {
				return 0, nil
			}
			if n, _ := strconv.Atoi(m[1]); n >= min {
				return n, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("%s: no %q in its log after %s", name, re, timeout)
}

func lastTick(ctx context.Context, e *engine.Engine, name string) (int, error) {
	var buf bytes.Buffer
	if err := e.Logs(ctx, name, &buf, engine.LogsOptions{}); err != nil {
		return 0, err
	}
	ms := regexp.MustCompile(`tick (\d+)`).FindAllStringSubmatch(buf.String(), -1)
	if len(ms) == 0 {
		return 0, fmt.Errorf("%s: no tick in its log", name)
	}
	return strconv.Atoi(ms[len(ms)-1][1])
}

// SampleImage is an image holding only this (static) binary as /sample.
func SampleImage() (v1.Image, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if err := requireStatic(self); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"tmp/", "etc/", "proc/", "dev/", "sys/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: mode})
	}
	tw.WriteHeader(&tar.Header{Name: "sample", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))})
	tw.Write(bin)
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(empty.Image, layer)
}

func requireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the demo copies it into a container: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}
