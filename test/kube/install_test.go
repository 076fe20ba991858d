package kube

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// config/default installed for real: the controller Deployment and the
// agent DaemonSet run as pods (from the image hack/image.sh builds) and
// take a checkpoint and a restore, with the host-process stack stopped.
// The test node's own paths replace the defaults (its containerd keeps
// state elsewhere; nothing is installed in the host's /usr/local/bin).
func TestInstalledStackCheckpointsAndRestores(t *testing.T) {
	requireNode(t)
	tarball := filepath.Join(t.TempDir(), "stasis-image.tar")
	if out, err := exec.Command("bash", "../../hack/image.sh", tarball).CombinedOutput(); err != nil {
		t.Fatalf("hack/image.sh: %v\n%s", err, out)
	}
	const image = "localhost/stasis:test"
	if err := node.ImportRootfs(image, tarball, []string{"/stasis"}); err != nil {
		t.Fatal(err)
	}
	// The install's one secret: the cluster's checkpoint key.
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "stasis-system", Name: "stasis-checkpoint-key"}, Data: map[string][]byte{}}
	var err error
	for k, f := range map[string]string{"cosign.key": clusterKey + ".key", "cosign.pub": clusterKey + ".pub"} {
		if secret.Data[k], err = os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := kc.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kc.Delete(ctx, secret) })

	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "../../config/default")
	if err != nil {
		t.Fatal(err)
	}
	installDir := t.TempDir()
	apiEnv := []corev1.EnvVar{{Name: "KUBERNETES_SERVICE_HOST", Value: node.IP}, {Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(node.APIPort())}}
	stopController(t)
	for _, r := range res.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		var obj client.Object = &unstructured.Unstructured{Object: m}
		switch r.GetKind() {
		case "DaemonSet":
			ds := &appsv1.DaemonSet{}
			runtime.DefaultUnstructuredConverter.FromUnstructured(m, ds)
			spec := &ds.Spec.Template.Spec
			for i := range spec.InitContainers {
				spec.InitContainers[i].Image, spec.InitContainers[i].ImagePullPolicy = image, corev1.PullNever
			}
			c := &spec.Containers[0]
			c.Image, c.ImagePullPolicy, c.Env = image, corev1.PullNever, append(c.Env, apiEnv...)
			// This host forbids entering its PID 1 (it has capabilities
			// root here lacks); containerd is in the same mount namespace.
			c.Env = append(c.Env, corev1.EnvVar{Name: "STASIS_HOST_PID", Value: strconv.Itoa(node.ContainerdPid())})
			// The kubelet's serving certificate is where the test node
			// keeps it; the node socket is the host-process agent's.
			cert, key := node.KubeletServing()
			c.Args = []string{"--root=" + stasisRoot, "--runroot=" + stasisRunRoot, "agent", "--listen=$(NODE_IP):7443",
				"--tls-cert=/host" + cert, "--tls-key=/host" + key, "--in-cluster", "--node-name=$(NODE_NAME)",
				"--node-socket=" + filepath.Join(stasisRunRoot, "agent-incluster.sock"),
				"--signing-key=/etc/stasis/checkpoint-key/cosign.key",
				"--cri-runc-root=" + filepath.Join(node.RuncRoot(), "k8s.io"), "--host-root=/host", "--mountinfo=/proc/1/mountinfo"}
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "test-store", MountPath: stasisRoot},
				corev1.VolumeMount{Name: "test-run", MountPath: stasisRunRoot})
			for i, v := range spec.Volumes {
				if v.HostPath != nil && (v.Name == "host-bin" || v.Name == "host-etc") {
					spec.Volumes[i].HostPath.Path = filepath.Join(installDir, v.Name)
				}
			}
			spec.Volumes = append(spec.Volumes,
				corev1.Volume{Name: "test-store", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: stasisRoot}}},
				corev1.Volume{Name: "test-run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: stasisRunRoot}}})
			obj = ds
		case "Deployment":
			d := &appsv1.Deployment{}
			runtime.DefaultUnstructuredConverter.FromUnstructured(m, d)
			c := &d.Spec.Template.Spec.Containers[0]
			c.Image, c.ImagePullPolicy, c.Env = image, corev1.PullNever, append(c.Env, apiEnv...)
			obj = d
		}
		if err := kc.Create(ctx, obj); err != nil && !isAlreadyExists(err) {
			t.Fatalf("%s %s: %v", r.GetKind(), r.GetName(), err)
		}
		if k := r.GetKind(); k == "DaemonSet" || k == "Deployment" {
			// Gone, pods and all, before the host-process controller
			// comes back (stopController's cleanup runs after this one).
			t.Cleanup(func() {
				kc.Delete(ctx, obj)
				sel := "app.kubernetes.io/name=" + obj.GetName()
				poll(t, time.Minute, obj.GetName()+" pods gone", func() bool {
					l, err := node.Client.CoreV1().Pods("stasis-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
					return err == nil && len(l.Items) == 0
				})
			})
		}
	}
	waitPods(t, "stasis-system", "app.kubernetes.io/name=stasis-agent")
	waitPods(t, "stasis-system", "app.kubernetes.io/name=stasis-controller")
	if _, err := os.Stat(filepath.Join(installDir, "host-bin", "stasis-runc")); err != nil {
		t.Fatalf("the agent's init container did not install stasis-runc: %v", err)
	}

	t.Cleanup(func() {
		if t.Failed() {
			l, _ := node.Client.CoreV1().Pods("stasis-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=stasis-agent"})
			for _, p := range l.Items {
				b, _ := node.Client.CoreV1().Pods("stasis-system").GetLogs(p.Name, &corev1.PodLogOptions{Container: "agent"}).DoRaw(ctx)
				t.Logf("agent %s: %s", p.Name, tail(string(b), 15))
			}
		}
	})
	ns := namespace(t, "installed")
	createPod(t, counterPod(ns, "web"))
	waitReady(t, ns, "web")
	at := waitCount(t, ns, "web", "counter", 2)
	checkpointPod(t, ns, "web-1", "web", nil)
	restoreCounter(t, kc, ns, "copy", stasisv1.CheckpointReference{Name: "web-1"}, at)
}

// waitPods waits for the pods of a selector to be Ready, and says why not.
func waitPods(t *testing.T, ns, selector string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		l, err := node.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil || len(l.Items) == 0 {
			continue
		}
		p := l.Items[0]
		last = podState(&p)
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return
			}
		}
		if len(p.Status.ContainerStatuses) > 0 {
			prev := p.Status.ContainerStatuses[0].RestartCount > 0
			logs, _ := node.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Previous: prev}).DoRaw(ctx)
			last += fmt.Sprintf("\nlogs: %s", tail(string(logs), 10))
		}
	}
	t.Fatalf("%s in %s not Ready: %s", selector, ns, last)
}
