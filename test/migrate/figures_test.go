package migrate

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/test/kubenode"
)

// TestFigures prints the figures, from one run: for the busybox
// counter and for hack/memhog holding 64 MiB, 512 MiB and 2 GiB of random
// bytes (and 512 MiB that compresses), an offline Migration node-a (containerd) → node-b (CRI-O): the
// downtime the application sees (its last line logged on node-a to its
// first on node-b, by the runtimes' log timestamps), the downtime the
// Migration reports, the total time and the bytes moved, eager and lazy;
// and the baseline, the pod moved by hand (manualFigure), whose lost time
// runs from the last tick in its checkpoint to its first new one.
// hack/bench-migrate.sh runs it; without STASIS_BENCH_MIGRATE it is skipped.
func TestFigures(t *testing.T) {
	requireCluster(t)
	if !benchFigures() {
		t.Skip("a benchmark: hack/bench-migrate.sh runs it")
	}
	importMemhog(t)
	ns := namespace(t, "figures")
	fmt.Printf("%-24s %10s %10s %10s %12s %11s %11s\n", "offline, a → b", "app down", "reported", "total", "checkpoint",
		"checkpoint", "restore")
	fmt.Printf("%-24s %10s %10s %10s %12s %11s %11s\n", "", "", "", "", "size", "dump", "to Ready")
	type workload struct {
		name, image string
		args        []string
	}
	for _, w := range []workload{
		{"busybox counter", kubenode.BusyboxImage, []string{"sh", "-c", `i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.02; done`}},
		{"memhog 64 MiB", memhogImage, []string{"/memhog", "64"}},
		{"memhog 512 MiB", memhogImage, []string{"/memhog", "512"}},
		// The same size of memory that compresses (resident, one byte
		// repeated per page).
		{"memhog 512 MiB pattern", memhogImage, []string{"/memhog", "-fill", "pattern", "512"}},
		{"memhog 2 GiB", memhogImage, []string{"/memhog", "2048"}},
	} {
		for _, lazy := range []bool{false, true} {
			figure(t, ns, w.name, w.image, w.args, lazy)
		}
		manualFigure(t, ns, w.name, w.image, w.args)
	}
}

// figure migrates one workload and prints its row.
// podName is a workload's pod: "memhog 64 MiB" → "memhog-64-mib".
func podName(workload string) string {
	return strings.NewReplacer(" ", "-", "busybox-", "").Replace(strings.ToLower(workload))
}

// benchFigures says whether this run prints the figures
// (STASIS_BENCH_MIGRATE, set by hack/bench-migrate.sh).
func benchFigures() bool { return os.Getenv("STASIS_BENCH_MIGRATE") != "" }

func figure(t *testing.T, ns, name, image string, args []string, lazy bool) {
	{
		pod := podName(name)
		if lazy {
			name += ", lazy"
			pod += "-lazy"
		}
		w := struct {
			name, image string
			args        []string
		}{name, image, args}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns},
			Spec: corev1.PodSpec{NodeName: "node-a", TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{Name: "app", Image: w.image, ImagePullPolicy: corev1.PullNever, Command: w.args}}}}
		if _, err := cluster.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, pod, "node-a")
		waitTicking(t, ns, pod)
		lastOnA := followLast(ns, pod)
		start := time.Now()
		m := migrateWith(t, ns, pod+"-to-b", stasisv1.MigrationSpec{PodName: pod, TargetNode: "node-b", LazyPages: lazy})
		total := time.Since(start)
		if m.Status.Phase != stasisv1.MigrationSucceeded {
			t.Fatalf("%s: %s %s: %s", w.name, m.Status.Phase, m.Status.Reason, m.Status.Message)
		}
		waitRunning(t, ns, pod, "node-b")
		last := <-lastOnA
		first := firstTick(t, ns, pod)
		var ck stasisv1.Checkpoint
		var rs stasisv1.Restore
		kc.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: m.Status.Checkpoint}, &ck)
		kc.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: m.Status.Restore}, &rs)
		fmt.Printf("%-24s %8.2f s %8.2f s %8.2f s %8.1f MiB %9.2f s %9.2f s\n", w.name, first.Sub(last).Seconds(),
			float64(m.Status.DowntimeMillis)/1000, total.Seconds(), float64(m.Status.BytesMoved)/(1<<20),
			float64(ck.Status.Containers[0].DurationMillis)/1000, seconds(rs.Status.CompletionTime, rs.Status.StartTime))
		zero := int64(0)
		cluster.Client.CoreV1().Pods(ns).Delete(context.Background(), pod, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}
}

const memhogImage = "localhost/memhog:1"

var memhogOnce sync.Once

// importMemhog puts memhogImage on every node.
func importMemhog(t *testing.T) {
	memhogOnce.Do(func() {
		rootfs := memhogRootfs(t)
		for _, n := range cluster.Nodes {
			if err := n.ImportRootfs(memhogImage, rootfs, []string{"/memhog"}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// memhogRootfs is busybox's rootfs with hack/memhog as /memhog.
func memhogRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "memhog")
	build := exec.Command("go", "build", "-o", bin, "../../hack/memhog")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build memhog: %v\n%s", err, out)
	}
	bb, err := kubenode.BusyboxRootfs()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	tr := tar.NewReader(bytes.NewReader(bb))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		tw.WriteHeader(h)
		io.Copy(tw, tr)
	}
	mh, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	tw.WriteHeader(&tar.Header{Name: "memhog", Mode: 0o755, Size: int64(len(mh)), Typeflag: tar.TypeReg})
	tw.Write(mh)
	tw.Close()
	path := filepath.Join(dir, "rootfs.tar")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitTicking waits until the pod logs ticks (memhog has filled its
// memory).
func waitTicking(t *testing.T, ns, pod string) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b, err := cluster.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{TailLines: ptr(int64(1))}).DoRaw(context.Background())
		if err == nil && bytes.HasPrefix(b, []byte("tick ")) {
			return
		}
	}
	t.Fatalf("%s/%s does not tick", ns, pod)
}

// followLast follows the pod's log until it ends and delivers the time
// of its last tick.
func followLast(ns, pod string) <-chan time.Time {
	out := make(chan time.Time, 1)
	rc, err := cluster.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Follow: true, Timestamps: true,
		SinceSeconds: ptr(int64(1))}).Stream(context.Background())
	if err != nil {
		out <- time.Time{}
		return out
	}
	go func() {
		defer rc.Close()
		var last time.Time
		sc := bufio.NewScanner(rc)
		for sc.Scan() {
			if ts, ok := tickTime(sc.Text()); ok {
				last = ts
			}
		}
		out <- last
	}()
	return out
}

// firstTick is the time of the first tick the pod logged.
func firstTick(t *testing.T, ns, pod string) time.Time {
	t.Helper()
	return firstTickAfter(t, ns, pod, time.Time{})
}

// firstTickAfter is the time of the first tick the pod logged after
// since: a container CRI-O restores from a checkpoint image starts with
// its checkpointed log.
func firstTickAfter(t *testing.T, ns, pod string, since time.Time) time.Time {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, err := cluster.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Timestamps: true}).DoRaw(context.Background())
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if ts, ok := tickTime(sc.Text()); ok && ts.After(since) {
				return ts
			}
		}
	}
	t.Fatalf("%s/%s logged no tick on its new node", ns, pod)
	return time.Time{}
}

// tickTime is the timestamp of a tick line of a log read with timestamps.
func tickTime(line string) (time.Time, bool) {
	stamp, text, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(text, "tick ") {
		return time.Time{}, false
	}
	ts, err := time.Parse(time.RFC3339Nano, stamp)
	return ts, err == nil
}

func ptr[T any](v T) *T { return &v }

// seconds is the seconds from start to end (whole seconds: the API's
// times).
func seconds(end, start *metav1.Time) float64 {
	if end == nil || start == nil {
		return 0
	}
	return end.Sub(start.Time).Seconds()
}
