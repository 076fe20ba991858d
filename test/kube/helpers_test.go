package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stasis-dev/stasis/test/kubenode"
)

var ctx = context.Background()

// namespace makes a namespace the test removes again.
func namespace(t *testing.T, name string) string {
	t.Helper()
	requireNode(t)
	_, err := node.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	// The controller-manager makes the default ServiceAccount pods need.
	poll(t, 30*time.Second, "default ServiceAccount in "+name, func() bool {
		_, err := node.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
	return name
}

// counterScript counts once a second into its log and /tmp/count, with
// the pod's hostname, so a restore shows both where it went on from and
// whose identity it has.
const counterScript = `i=0; while true; do echo $i > /tmp/count; echo "count $i $(hostname)"; i=$((i+1)); sleep 1; done`

func counterContainer(name string) corev1.Container {
	return corev1.Container{Name: name, Image: kubenode.BusyboxImage, ImagePullPolicy: corev1.PullNever,
		Command: []string{"sh", "-c", counterScript}}
}

func counterPod(ns, name string, containers ...string) *corev1.Pod {
	if len(containers) == 0 {
		containers = []string{"counter"}
	}
	grace := int64(1)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &grace}}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, counterContainer(c))
	}
	return p
}

func createPod(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := node.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitReady waits for a pod to be Ready and returns how long it took.
func waitReady(t *testing.T, ns, name string) time.Duration {
	t.Helper()
	start := time.Now()
	var last *corev1.Pod
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		p, err := node.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		last = p
		for _, cs := range p.Status.ContainerStatuses {
			// A restore that failed is not retried into success: stop at
			// the first error the runtime reports.
			if st := cs.LastTerminationState.Terminated; st != nil && st.Reason == "StartError" {
				t.Fatalf("pod %s/%s: container %s failed to start: %s", ns, name, cs.Name, st.Message)
			}
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return time.Since(start)
			}
		}
	}
	t.Fatalf("pod %s/%s not Ready: %s\ncontainerd:\n%s", ns, name, podState(last), node.LogTail("containerd", 10))
	return 0
}

func podState(p *corev1.Pod) string {
	if p == nil {
		return "never seen"
	}
	b, _ := json.Marshal(p.Status)
	return string(b)
}

// counts are the counter values a container logged, in order.
func counts(t *testing.T, ns, pod, container string) ([]int, []string) {
	t.Helper()
	rc, err := node.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).Stream(ctx)
	if err != nil {
		return nil, nil
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	var ns_ []int
	var hosts []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "count" {
			if n, err := strconv.Atoi(f[1]); err == nil {
				ns_ = append(ns_, n)
				if len(f) >= 3 {
					hosts = append(hosts, f[2])
				}
			}
		}
	}
	return ns_, hosts
}

// waitCount waits until a container has logged n or more and returns the
// last value.
func waitCount(t *testing.T, ns, pod, container string, n int) int {
	t.Helper()
	var c []int
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if c, _ = counts(t, ns, pod, container); len(c) > 0 && c[len(c)-1] >= n {
			return c[len(c)-1]
		}
	}
	t.Fatalf("%s/%s/%s did not count to %d: %v", ns, pod, container, n, c)
	return 0
}

// waitRestoredFrom waits until the restored pod's counter counts past at,
// the checkpoint's count, and fails unless its first line is at or past at:
// a counter that started again from 0 was not restored. It returns the
// last count.
func waitRestoredFrom(t *testing.T, ns, pod string, at int) int {
	t.Helper()
	last := waitCount(t, ns, pod, "counter", at+1)
	if got, _ := counts(t, ns, pod, "counter"); len(got) == 0 || got[0] < at {
		t.Fatalf("%s/%s: restored counter logged %v, not from the checkpoint's %d on: it did not restore", ns, pod, got, at)
	}
	return last
}

// kubeletCheckpoint checkpoints a container through the kubelet's API and
// returns the archive's path on the node.
func kubeletCheckpoint(t *testing.T, ns, pod, container string) string {
	t.Helper()
	hc, err := node.KubeletClient()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Post(fmt.Sprintf("%s/checkpoint/%s/%s/%s?timeout=60", node.KubeletURL, ns, pod, container), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Items []string `json:"items"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &r) != nil || len(r.Items) != 1 {
		t.Fatalf("kubelet checkpoint %s/%s/%s: %s: %s", ns, pod, container, resp.Status, body)
	}
	return r.Items[0]
}

// stasis runs the CLI on the node's store.
func stasis(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(stasisBin, append([]string{"--root", stasisRoot, "--runroot", stasisRunRoot}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("stasis %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func poll(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("%s: not within %s", what, limit)
}

func isAlreadyExists(err error) bool { return apierrors.IsAlreadyExists(err) }
