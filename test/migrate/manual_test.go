package migrate

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stasis-dev/stasis/pkg/wire"
)

// manualFigure is the baseline row: a pod moved by hand with what
// Kubernetes and CRI-O have, between the two CRI-O nodes (containerd 2.4
// restores no checkpoint image): the kubelet's checkpoint API on node-b,
// the pod deleted, the archive made a checkpoint image (CRI-O's
// annotation), loaded into node-c's store, and a pod of that image
// created on node-c.
func manualFigure(t *testing.T, ns, name, image string, args []string) {
	t.Helper()
	pod := "manual-" + podName(name)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: "node-b", TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullNever, Command: args}}}}
	ctx := context.Background()
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, pod, "node-b")
	waitTicking(t, ns, pod)
	start := time.Now()
	archive, err := kubeletCheckpoint(ctx, "node-b", ns, pod, "app")
	if err != nil {
		t.Fatalf("%s: kubelet checkpoint: %v", name, err)
	}
	dump := time.Since(start)
	zero := int64(0)
	if err := cluster.Client.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	ref := "localhost/" + pod + "-checkpoint:1"
	oci := filepath.Join(t.TempDir(), "checkpoint.tar")
	if err := checkpointImage(archive, ref, "app", oci); err != nil {
		t.Fatalf("%s: checkpoint image: %v", name, err)
	}
	if err := cluster.Node("node-c").ImportImage(oci); err != nil {
		t.Fatalf("%s: load into node-c: %v", name, err)
	}
	created := time.Now()
	p = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: "node-c", TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "app", Image: ref, ImagePullPolicy: corev1.PullNever}}}}
	if err := waitGone(ctx, ns, pod); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, pod, "node-c")
	ready := time.Since(created)
	total := time.Since(start)
	// The source ticks on after the kubelet's checkpoint until it is
	// gone (the kubelet's minimum grace period), and those ticks are
	// lost: what the application loses is from the last tick in the
	// checkpoint (the restored log begins with the checkpointed one) to
	// its first new tick on node-c.
	inCheckpoint, first := checkpointedTicks(t, ns, pod, created)
	fi, _ := os.Stat(archive)
	fmt.Printf("%-24s %8.2f s %10s %8.2f s %8.1f MiB %9.2f s %9.2f s\n", name+", by hand", first.Sub(inCheckpoint).Seconds(), "-",
		total.Seconds(), float64(fi.Size())/(1<<20), dump.Seconds(), ready.Seconds())
	cluster.Client.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}

// checkpointedTicks reads the log of a pod CRI-O restored from a
// checkpoint image: the time of the last tick it logged before created
// (the checkpointed log it begins with), and of the first after.
func checkpointedTicks(t *testing.T, ns, pod string, created time.Time) (last, first time.Time) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, err := cluster.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Timestamps: true}).DoRaw(context.Background())
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			ts, ok := tickTime(l)
			switch {
			case !ok:
			case ts.Before(created):
				last = ts
			case first.IsZero():
				first = ts
			}
		}
		if !last.IsZero() && !first.IsZero() {
			return last, first
		}
	}
	t.Fatalf("%s/%s: no tick from its checkpoint (%v) or none since (%v)", ns, pod, last, first)
	return
}

// kubeletCheckpoint has node's kubelet checkpoint a container (the
// ContainerCheckpoint API, as an administrator) and returns its archive.
func kubeletCheckpoint(ctx context.Context, node, ns, pod, container string) (string, error) {
	cert, err := tls.LoadX509KeyPair(cluster.AdminCert, cluster.AdminKey)
	if err != nil {
		return "", err
	}
	roots, err := wire.LoadPool(cluster.CA)
	if err != nil {
		return "", err
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots}}}
	url := fmt.Sprintf("https://%s/checkpoint/%s/%s/%s?timeout=600", net.JoinHostPort(cluster.Node(node).IP, "10250"), ns, pod, container)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct{ Items []string }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil || len(out.Items) != 1 {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return out.Items[0], nil
}

// checkpointImage writes an OCI archive of ref: one uncompressed layer,
// the kubelet's checkpoint archive, with the annotation by which CRI-O
// restores a container from an image.
func checkpointImage(archive, ref, container, out string) error {
	layer, err := tarball.LayerFromFile(archive, tarball.WithMediaType(types.OCIUncompressedLayer))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf.Architecture, cf.OS = "amd64", "linux"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img = mutate.Annotations(img, map[string]string{"io.kubernetes.cri-o.annotations.checkpoint.name": container,
		"org.criu.checkpoint.container.name": container}).(v1.Image)
	dir := out + ".d"
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	return tarDir(dir, out)
}

// tarDir writes dir's files into a tar at out.
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		return err
	}
	return tw.Close()
}

// waitGone waits until no pod of that name is left.
func waitGone(ctx context.Context, ns, pod string) error {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{}); err != nil {
			return nil
		}
	}
	return fmt.Errorf("pod %s/%s not gone", ns, pod)
}
