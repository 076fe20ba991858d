package controller

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/wire"
	"github.com/stasis-dev/stasis/test/kubenode"
)

// The reconcilers against a real etcd and kube-apiserver (no node: pods
// never run, so tests set the status a kubelet would), as envtest does.
var (
	k      client.Client
	cached client.Client // the controllers' view, through their cache
	ctx    = context.Background()
)

// notRoot, when set, is why the tests that need the API server skip.
var notRoot string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		notRoot = "controller tests start an API server under /run and need root"
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctrllog.SetLogger(logr.Discard())
	n, err := kubenode.Start(ctx, kubenode.Options{ControlPlaneOnly: true})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer n.Stop()
	if err := n.InstallCRDs("../../config/crd/bases"); err != nil {
		fmt.Println(err)
		return 1
	}
	if err := n.Apply(ctx, "../../config/runtime/runtimeclass.yaml"); err != nil {
		fmt.Println(err)
		return 1
	}
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	stasisv1.AddToScheme(scheme)
	mgr, err := ctrl.NewManager(n.Config, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	// A real agent client, aimed at a port where no agent listens.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ev := mgr.GetEventRecorder("stasis-controller")
	if err := (&CheckpointReconciler{Client: mgr.GetClient(), Events: ev, Requeue: 200 * time.Millisecond,
		Agents: &AgentClients{Nodes: wire.Nodes{Port: port, CA: n.CA, Tokens: fixedToken("t")}}}).SetupWithManager(mgr); err != nil {
		fmt.Println(err)
		return 1
	}
	if err := (&RestoreReconciler{Client: mgr.GetClient(), Events: ev, Requeue: 200 * time.Millisecond}).SetupWithManager(mgr); err != nil {
		fmt.Println(err)
		return 1
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go mgr.Start(mctx)
	cached = mgr.GetClient()
	if k, err = client.New(n.Config, client.Options{Scheme: scheme}); err != nil {
		fmt.Println(err)
		return 1
	}
	return m.Run()
}

func ns(t *testing.T) string {
	t.Helper()
	if notRoot != "" {
		t.Skip(notRoot)
	}
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 50 {
		name = name[:50]
	}
	if err := k.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	// No controller-manager here makes it; pods need it.
	if err := k.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: name, Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	return name
}

func pod(ns, name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations,
		Labels: map[string]string{"app": name, "pod-template-hash": "abc"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox",
			VolumeMounts: []corev1.VolumeMount{{Name: "kube-api-access-x", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}}}},
			Volumes: []corev1.Volume{{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}}}
}

func mustCreate(t *testing.T, o client.Object) {
	t.Helper()
	if err := k.Create(ctx, o); err != nil {
		t.Fatal(err)
	}
}

func checkpoint(t *testing.T, ns, name, podName string, dest *stasisv1.ImageDestination) *stasisv1.Checkpoint {
	t.Helper()
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: stasisv1.CheckpointSpec{PodName: podName, Destination: stasisv1.Destination{Image: dest}}}
	if err := k.Create(ctx, ck); err != nil {
		t.Fatal(err)
	}
	return ck
}

// eventually waits for a Checkpoint or Restore to satisfy ok.
func eventually[T client.Object](t *testing.T, obj T, ok func(T) bool) T {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := k.Get(ctx, client.ObjectKeyFromObject(obj), obj); err == nil && ok(obj) {
			return obj
		}
	}
	t.Fatalf("%s/%s never got there: %+v", obj.GetNamespace(), obj.GetName(), obj)
	return obj
}

func failedWith(t *testing.T, ck *stasisv1.Checkpoint, reason, message string) {
	t.Helper()
	eventually(t, ck, func(c *stasisv1.Checkpoint) bool { return c.Status.Phase.Done() })
	if ck.Status.Phase != stasisv1.PhaseFailed || ck.Status.Reason != reason || !strings.Contains(ck.Status.Message, message) {
		t.Fatalf("checkpoint %s: %s %s %q, want Failed %s %q", ck.Name, ck.Status.Phase, ck.Status.Reason, ck.Status.Message, reason, message)
	}
}

func TestCheckpointOfMissingPodFails(t *testing.T) {
	n := ns(t)
	failedWith(t, checkpoint(t, n, "c", "ghost", nil), "PodNotFound", "pod "+n+"/ghost does not exist")
}

func TestOptOutsAreHonoured(t *testing.T) {
	n := ns(t)
	mustCreate(t, pod(n, "secret", map[string]string{"stasis.dev/checkpoint": "never"}))
	failedWith(t, checkpoint(t, n, "c1", "secret", nil), "OptedOut", "stasis.dev/checkpoint=never")

	mustCreate(t, pod(n, "local", map[string]string{"stasis.dev/migrate": "never"}))
	failedWith(t, checkpoint(t, n, "c2", "local", &stasisv1.ImageDestination{Repository: "r.example/x"}), "OptedOut", "stay on its node")
	// Kept on its node, the same pod may be checkpointed: it waits to run.
	ck := checkpoint(t, n, "c3", "local", nil)
	eventually(t, ck, func(c *stasisv1.Checkpoint) bool { return c.Status.Phase == stasisv1.PhasePending })
	if !strings.Contains(ck.Status.Message, "waiting for container app") {
		t.Fatalf("pending checkpoint says %q", ck.Status.Message)
	}
}

func TestUnknownContainerFails(t *testing.T) {
	n := ns(t)
	mustCreate(t, pod(n, "web", nil))
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: "c"},
		Spec: stasisv1.CheckpointSpec{PodName: "web", Containers: []string{"nope"}}}
	k.Create(ctx, ck)
	failedWith(t, ck, "ContainerNotFound", `no container "nope"`)
}

// A running pod whose node's agent cannot be reached: the Checkpoint
// fails saying so, with the pod's template recorded.
func TestUnreachableAgentFailsClearly(t *testing.T) {
	n := ns(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}
	if err := k.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	if err := k.Status().Update(ctx, node); err != nil {
		t.Fatal(err)
	}
	p := pod(n, "web", nil)
	p.Spec.NodeName = n
	if err := k.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "app",
		ContainerID: "containerd://0123abcd", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}
	if err := k.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	ck := checkpoint(t, n, "c", "web", nil)
	failedWith(t, ck, "CheckpointFailed", "stasis agent on node "+n)
	if !strings.Contains(ck.Status.Message, "connection refused") || ck.Status.NodeName != n {
		t.Fatalf("failure does not say why or where: %+v", ck.Status)
	}
	// An administrator sees why in the Checkpoint's events, too.
	var evs eventsv1.EventList
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		k.List(ctx, &evs, client.InNamespace(n))
		found := false
		for _, e := range evs.Items {
			found = found || (e.Regarding.Name == "c" && e.Reason == "CheckpointFailed" && e.Type == corev1.EventTypeWarning &&
				strings.Contains(e.Note, "connection refused"))
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Warning event CheckpointFailed for the Checkpoint: %+v", evs.Items)
		}
	}
	tmpl := ck.Status.PodTemplate
	if tmpl == nil || len(tmpl.Spec.Volumes) != 0 || len(tmpl.Spec.Containers[0].VolumeMounts) != 0 ||
		tmpl.Labels["pod-template-hash"] != "" || tmpl.Labels["app"] != "web" {
		t.Fatalf("captured template keeps what belongs to the old instance: %+v", tmpl)
	}
}

func restore(t *testing.T, ns, name string, ref stasisv1.CheckpointReference) *stasisv1.Restore {
	t.Helper()
	rs := &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: stasisv1.RestoreSpec{CheckpointRef: ref, PodName: name}}
	if err := k.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestRestoreOfMissingOrFailedCheckpointFails(t *testing.T) {
	n := ns(t)
	rs := eventually(t, restore(t, n, "r1", stasisv1.CheckpointReference{Name: "ghost"}), func(r *stasisv1.Restore) bool { return r.Status.Phase.Done() })
	if rs.Status.Reason != "CheckpointNotFound" {
		t.Fatalf("restore of a missing checkpoint: %+v", rs.Status)
	}
	failedWith(t, checkpoint(t, n, "c", "ghost", nil), "PodNotFound", "")
	rs = eventually(t, restore(t, n, "r2", stasisv1.CheckpointReference{Name: "c"}), func(r *stasisv1.Restore) bool { return r.Status.Phase.Done() })
	if rs.Status.Reason != "CheckpointFailed" || !strings.Contains(rs.Status.Message, "does not exist") {
		t.Fatalf("restore of a failed checkpoint: %+v", rs.Status)
	}
}

// A Restore of a node-local checkpoint creates the pod on that node, run by
// the RuntimeClass stasis with the restore annotation, and succeeds when
// the pod is Ready; a second Restore onto the same pod name is refused.
func TestRestoreCreatesThePod(t *testing.T) {
	n := ns(t)
	src := pod(n, "web", nil)
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: "c"}, Spec: stasisv1.CheckpointSpec{PodName: "web"}}
	// Succeeded as an agent would have made it, for a pod that is gone.
	ck.Status = stasisv1.CheckpointStatus{Phase: stasisv1.PhaseSucceeded, NodeName: "node-a",
		PodTemplate: podTemplate(src), Containers: []stasisv1.ContainerCheckpoint{{Name: "app", Image: "localhost/stasis/x/c-1:app"}}}
	st := ck.Status // Create answers with the stored object, status empty
	if err := k.Create(ctx, ck); err != nil {
		t.Fatal(err)
	}
	// The checkpoint reconciler fails it first (its pod is gone); then the
	// status written here stays, and the controllers' cache must see it.
	eventually(t, ck, func(c *stasisv1.Checkpoint) bool { return c.Status.Phase == stasisv1.PhaseFailed })
	ck.Status = st
	if err := k.Status().Update(ctx, ck); err != nil {
		t.Fatal(err)
	}
	seen := &stasisv1.Checkpoint{}
	for deadline := time.Now().Add(10 * time.Second); seen.Status.Phase != stasisv1.PhaseSucceeded; time.Sleep(20 * time.Millisecond) {
		err := cached.Get(ctx, client.ObjectKeyFromObject(ck), seen)
		if time.Now().After(deadline) {
			t.Fatalf("the controllers' cache still sees %s (%v)", seen.Status.Phase, err)
		}
	}
	rs := eventually(t, restore(t, n, "copy", stasisv1.CheckpointReference{Name: "c"}), func(r *stasisv1.Restore) bool {
		return r.Status.Phase == stasisv1.PhaseRunning
	})
	var p corev1.Pod
	if err := k.Get(ctx, client.ObjectKey{Namespace: n, Name: "copy"}, &p); err != nil {
		t.Fatal(err)
	}
	if pinnedTo(&p) != "node-a" || p.Spec.RuntimeClassName == nil || *p.Spec.RuntimeClassName != "stasis" ||
		p.Annotations[stasisv1.AnnotationRestoreFrom] != "Restore/copy" || p.Labels[stasisv1.LabelRestore] != "copy" {
		t.Fatalf("restored pod: node %q runtimeClass %v annotations %v labels %v", pinnedTo(&p), p.Spec.RuntimeClassName, p.Annotations, p.Labels)
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if err := k.Status().Update(ctx, &p); err != nil {
		t.Fatal(err)
	}
	eventually(t, rs, func(r *stasisv1.Restore) bool { return r.Status.Phase == stasisv1.PhaseSucceeded })

	other := &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: "again"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "c"}, PodName: "copy"}}
	k.Create(ctx, other)
	eventually(t, other, func(r *stasisv1.Restore) bool { return r.Status.Phase.Done() })
	if other.Status.Reason != "PodExists" {
		t.Fatalf("second restore onto pod copy: %+v", other.Status)
	}
}

// A checkpoint image in a registry (by digest) needs no particular node.
func TestRestoreFromRegistryImageIsNotPinned(t *testing.T) {
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "c"},
		Status: stasisv1.CheckpointStatus{NodeName: "node-a", PodTemplate: podTemplate(pod("x", "web", nil)),
			Containers: []stasisv1.ContainerCheckpoint{{Name: "app", Image: "r.example/ckpt@sha256:" + strings.Repeat("a", 64)}}}}
	p, err := restorePod(&stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "r"}, Spec: stasisv1.RestoreSpec{PodName: "p"}}, ck)
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.NodeName != "" || p.Spec.Affinity != nil || p.Namespace != "y" || p.Name != "p" {
		t.Fatalf("pod %s/%s on node %q, affinity %v", p.Namespace, p.Name, p.Spec.NodeName, p.Spec.Affinity)
	}
}

// fixedToken is a TokenSource of one token, for an agent that is not there.
type fixedToken string

func (f fixedToken) Token(context.Context, string) (string, error) { return string(f), nil }

// pinnedTo is the node a pod's required node affinity names, or "".
func pinnedTo(p *corev1.Pod) string {
	if a := p.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		for _, t := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range t.MatchFields {
				if f.Key == "metadata.name" && len(f.Values) == 1 {
					return f.Values[0]
				}
			}
		}
	}
	return ""
}

// The restored pod is the source's declared shape, but not its identity or
// its grants: the Restore's service account (the namespace's default one
// unless named), the service-account mounts stripped from init containers
// too, no ephemeral containers, and only this Restore as its grant (an
// annotation the source pod carried from its own restore is dropped).
func TestRestoredPodShape(t *testing.T) {
	src := pod("x", "web", nil)
	src.Spec.ServiceAccountName = "powerful"
	src.Annotations = map[string]string{stasisv1.AnnotationRestoreFrom: "WarmStart/old", "restore.stasis.dev/app": "r.example/other:1",
		stasisv1.AnnotationLazyPages: "true", "team": "a"}
	mount := corev1.VolumeMount{Name: "kube-api-access-x1", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}
	src.Spec.Volumes = append(src.Spec.Volumes, corev1.Volume{Name: "kube-api-access-x1"})
	src.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox", VolumeMounts: []corev1.VolumeMount{mount}}}
	src.Spec.Containers[0].VolumeMounts = append(src.Spec.Containers[0].VolumeMounts, mount)
	src.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "busybox"}}}
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "c"},
		Status: stasisv1.CheckpointStatus{NodeName: "node-a", PodTemplate: podTemplate(src),
			Containers: []stasisv1.ContainerCheckpoint{{Name: "app", Image: "localhost/stasis/x/c-1:app"}}}}
	for _, sa := range []string{"", "runner"} {
		p, err := restorePod(&stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "r"},
			Spec: stasisv1.RestoreSpec{PodName: "p", ServiceAccountName: sa}}, ck)
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.ServiceAccountName != sa {
			t.Errorf("service account %q, want %q", p.Spec.ServiceAccountName, sa)
		}
		want := map[string]string{stasisv1.AnnotationRestoreFrom: "Restore/r", "team": "a"}
		if fmt.Sprint(p.Annotations) != fmt.Sprint(want) {
			t.Errorf("annotations %v, want %v", p.Annotations, want)
		}
		for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
			for _, m := range c.VolumeMounts {
				if m.Name == mount.Name {
					t.Errorf("container %s keeps the source's token mount", c.Name)
				}
			}
		}
		if len(p.Spec.InitContainers) != 1 || len(p.Spec.EphemeralContainers) != 0 || pinnedTo(p) != "node-a" || p.Spec.NodeName != "" {
			t.Errorf("init %d, ephemeral %d, pinned to %q, nodeName %q", len(p.Spec.InitContainers), len(p.Spec.EphemeralContainers), pinnedTo(p), p.Spec.NodeName)
		}
	}
}
