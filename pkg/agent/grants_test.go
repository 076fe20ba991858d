package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/google/go-containerregistry/pkg/v1/random"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// The checkpoint images of the grant world: ckApp is Checkpoint shop/ck's
// "app" container; golden is base/golden's, a namespace other than the pod's.
const (
	ckApp    = "registry.local/ckpt/web:ck-app@sha256:aa"
	ckDigest = "sha256:0a1b"
	golden   = "registry.local/ckpt/base:golden-app@sha256:bb"
	outside  = "quay.io/elsewhere/app-ckpt:1"
)

// grantWorld is what the API server holds, apart from the pod under test:
// Restores for pod shop/web (one recorded as its creator, one that another
// pod of that name took, one not recorded yet, ...), WarmStarts, and the
// Checkpoints they name.
func grantWorld() []client.Object {
	restore := func(name, pod, ck string, uid types.UID, lazy bool) *stasisv1.Restore {
		return &stasisv1.Restore{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:       stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: ck}, PodName: pod, LazyPages: lazy},
			Status:     stasisv1.RestoreStatus{PodUID: uid},
		}
	}
	checkpoint := func(ns, name string, phase stasisv1.Phase, ctrs ...stasisv1.ContainerCheckpoint) *stasisv1.Checkpoint {
		return &stasisv1.Checkpoint{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Status:     stasisv1.CheckpointStatus{Phase: phase, Containers: ctrs},
		}
	}
	warmStart := func(name string, spec stasisv1.WarmStartSpec) *stasisv1.WarmStart {
		return &stasisv1.WarmStart{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}, Spec: spec}
	}
	return []client.Object{
		restore("web-1", "web", "ck", "uid-web", false),
		restore("web-lazy", "web", "ck", "uid-web", true),
		restore("web-squatted", "web", "ck", "uid-first-web", false),
		restore("web-unrecorded", "web", "ck", "", false),
		restore("api-1", "api", "ck", "uid-web", false),
		restore("web-early", "web", "ck-running", "uid-web", false),
		restore("web-gone", "web", "ck-deleted", "uid-web", false),
		// "sidecar" was checkpointed but its image never made it out.
		checkpoint("shop", "ck", stasisv1.PhaseSucceeded,
			stasisv1.ContainerCheckpoint{Name: "app", Image: ckApp, Digest: ckDigest},
			stasisv1.ContainerCheckpoint{Name: "sidecar"}),
		checkpoint("shop", "ck-running", stasisv1.PhaseRunning,
			stasisv1.ContainerCheckpoint{Name: "app", Image: ckApp}),
		checkpoint("base", "golden", stasisv1.PhaseSucceeded,
			stasisv1.ContainerCheckpoint{Name: "app", Image: golden}),
		warmStart("ws-ref", stasisv1.WarmStartSpec{CheckpointRef: &stasisv1.CheckpointReference{Namespace: "base", Name: "golden"}}),
		warmStart("ws-images", stasisv1.WarmStartSpec{Images: map[string]string{"app": outside}, LazyPages: true}),
	}
}

// grantPod is pod shop/web, on this node (n1), with annotations.
func grantPod(annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "uid-web", Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app"}, {Name: "sidecar"}}},
	}
}

// testGrants resolves on node n1 against a fake API server holding objs;
// funcs, when set, intercept its calls.
func testGrants(t *testing.T, funcs *interceptor.Funcs, objs ...client.Object) *Grants {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := stasisv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	b := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...)
	if funcs != nil {
		b = b.WithInterceptorFuncs(*funcs)
	}
	return &Grants{Client: b.Build(), NodeName: "n1"}
}

// shortRecordWait keeps a Restore that never records its pod from holding
// the test up for the real 15 seconds.
func shortRecordWait(t *testing.T, d time.Duration) {
	t.Helper()
	saved := recordWait
	recordWait = d
	t.Cleanup(func() { recordWait = saved })
}

func from(grant string) map[string]string {
	return map[string]string{stasisv1.AnnotationRestoreFrom: grant}
}

func TestGrantResolve(t *testing.T) {
	shortRecordWait(t, 50*time.Millisecond)
	lazy := func(ann map[string]string) map[string]string {
		ann[stasisv1.AnnotationLazyPages] = "true"
		return ann
	}
	for _, c := range []struct {
		name string
		// pod is the pod the API server holds; nil for none.
		pod *corev1.Pod
		// req changes the request of a runtime creating container "app"
		// of that pod, passing on its grant annotation.
		req func(*wire.GrantRequest)
		// Either the answer, or a refusal whose message has this.
		want    *wire.GrantAnswer
		refused string
	}{
		// Granted.
		{name: "restore", pod: grantPod(from("Restore/web-1")),
			want: &wire.GrantAnswer{Restore: true, Image: ckApp, Namespace: "shop", Container: "app", Archive: ckDigest}},
		{name: "restore, the runtime passing no grant on", pod: grantPod(from("Restore/web-1")),
			// The pod's annotation is what counts, not what the runtime says.
			req:  func(r *wire.GrantRequest) { r.Grant = "" },
			want: &wire.GrantAnswer{Restore: true, Image: ckApp, Namespace: "shop", Container: "app", Archive: ckDigest}},
		{name: "restore, lazy pages from the grant", pod: grantPod(from("Restore/web-lazy")),
			want: &wire.GrantAnswer{Restore: true, Image: ckApp, Namespace: "shop", Container: "app", Archive: ckDigest, LazyPages: true}},
		{name: "restore, lazy pages from the pod", pod: grantPod(lazy(from("Restore/web-1"))),
			want: &wire.GrantAnswer{Restore: true, Image: ckApp, Namespace: "shop", Container: "app", Archive: ckDigest, LazyPages: true}},
		{name: "restore, a container with no checkpoint image", pod: grantPod(from("Restore/web-1")),
			// It is created as usual, not refused: the pod still starts.
			req:  func(r *wire.GrantRequest) { r.Container = "sidecar" },
			want: &wire.GrantAnswer{}},
		{name: "warmstart with a checkpointRef", pod: grantPod(from("WarmStart/ws-ref")),
			// The signature must be for the checkpoint's namespace, not the pod's.
			want: &wire.GrantAnswer{Restore: true, Image: golden, Namespace: "base", Container: "app"}},
		{name: "warmstart with images", pod: grantPod(from("WarmStart/ws-images")),
			// An image from outside: only its signature binds, to the pod's
			// namespace; there is no container or archive to bind it to.
			want: &wire.GrantAnswer{Restore: true, Image: outside, Namespace: "shop", LazyPages: true}},
		{name: "warmstart naming no image for this container", pod: grantPod(from("WarmStart/ws-images")),
			// Not a refusal: the container is created as usual.
			req:  func(r *wire.GrantRequest) { r.Container = "sidecar" },
			want: &wire.GrantAnswer{Namespace: "shop", LazyPages: true}},
		{name: "no annotation", pod: grantPod(nil),
			// Most pods of the RuntimeClass: passed through untouched.
			want: &wire.GrantAnswer{}},

		// Refused: the pod is not the one the runtime is creating here.
		{name: "pod does not exist", pod: nil,
			refused: "pod shop/web does not exist"},
		{name: "no pod UID", pod: grantPod(from("Restore/web-1")),
			req:     func(r *wire.GrantRequest) { r.PodUID = "" },
			refused: "no pod UID"},
		{name: "another pod UID", pod: grantPod(from("Restore/web-1")),
			// A pod of the same name, deleted and made again since.
			req:     func(r *wire.GrantRequest) { r.PodUID = "uid-older-web" },
			refused: "has UID uid-web, not uid-older-web"},
		{name: "pod bound to another node", pod: func() *corev1.Pod {
			p := grantPod(from("Restore/web-1"))
			p.Spec.NodeName = "n2"
			return p
		}(), refused: `bound to node "n2", not this node (n1)`},

		// Refused: the grant is not one this pod may use.
		{name: "request names another grant", pod: grantPod(from("Restore/web-1")),
			req:     func(r *wire.GrantRequest) { r.Grant = "Restore/web-lazy" },
			refused: `names "Restore/web-1" in restore.stasis.dev/from, not "Restore/web-lazy"`},
		{name: "request names a grant the pod does not", pod: grantPod(nil),
			// Else a runtime could be talked into a restore the pod never asked for.
			req:     func(r *wire.GrantRequest) { r.Grant = "Restore/web-1" },
			refused: `names "" in restore.stasis.dev/from`},
		{name: "unparsable grant", pod: grantPod(from("Checkpoint/ck")),
			refused: "want Restore/<name> or WarmStart/<name>"},
		{name: "legacy annotation naming a checkpoint", pod: grantPod(map[string]string{"restore.stasis.dev/image": ckApp}),
			// A pod author picks annotations: one naming an image is no grant.
			refused: "annotation restore.stasis.dev/image names a checkpoint directly"},
		{name: "legacy annotation beside a grant", pod: grantPod(map[string]string{
			stasisv1.AnnotationRestoreFrom: "Restore/web-1", "restore.stasis.dev/checkpoint": "ck"}),
			refused: "annotation restore.stasis.dev/checkpoint names a checkpoint directly"},
		{name: "grant does not exist", pod: grantPod(from("WarmStart/ws-deleted")),
			refused: "WarmStart/ws-deleted does not exist in namespace shop"},
		{name: "restore for another pod", pod: grantPod(from("Restore/api-1")),
			refused: "restore shop/api-1 is for pod api, not web"},
		{name: "restore that created another pod of this name", pod: grantPod(from("Restore/web-squatted")),
			// The squatting defence: a pod made under the Restore's pod name
			// before (or after) the controller's own gets nothing from it.
			refused: `created pod web with UID "uid-first-web", not this one (uid-web)`},
		{name: "restore that never records its pod", pod: grantPod(from("Restore/web-unrecorded")),
			// Waited for (recordWait, shortened here), then refused.
			refused: `created pod web with UID "", not this one (uid-web)`},
		{name: "checkpoint not succeeded", pod: grantPod(from("Restore/web-early")),
			refused: "checkpoint shop/ck-running is Running, not Succeeded"},
		{name: "checkpoint does not exist", pod: grantPod(from("Restore/web-gone")),
			refused: "Checkpoint/ck-deleted does not exist in namespace shop"},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs := grantWorld()
			req := wire.GrantRequest{Namespace: "shop", Pod: "web", PodUID: "uid-web", Container: "app"}
			if c.pod != nil {
				objs = append(objs, c.pod)
				req.Grant = c.pod.Annotations[stasisv1.AnnotationRestoreFrom]
			}
			if c.req != nil {
				c.req(&req)
			}
			ans, err := testGrants(t, nil, objs...).Resolve(context.Background(), req)
			if c.refused != "" {
				// errGrant is what nodeRoutes answers 403 Forbidden for.
				if !errors.Is(err, errGrant) || !strings.Contains(err.Error(), c.refused) {
					t.Fatalf("got %+v, %v; want a refusal saying %q", ans, err, c.refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if *ans != *c.want {
				t.Errorf("got %+v, want %+v", *ans, *c.want)
			}
		})
	}
}

// The controller records the pod it created just after creating it, which
// can be after the node starts it: a Restore read before is read again.
func TestGrantRestoreRecordedLate(t *testing.T) {
	reads := 0
	funcs := &interceptor.Funcs{Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
		err := c.Get(ctx, key, obj, opts...)
		if rs, ok := obj.(*stasisv1.Restore); ok {
			if reads++; reads == 1 {
				rs.Status.PodUID = ""
			}
		}
		return err
	}}
	g := testGrants(t, funcs, append(grantWorld(), grantPod(from("Restore/web-1")))...)
	ans, err := g.Resolve(context.Background(), wire.GrantRequest{
		Namespace: "shop", Pod: "web", PodUID: "uid-web", Container: "app", Grant: "Restore/web-1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (wire.GrantAnswer{Restore: true, Image: ckApp, Namespace: "shop", Container: "app", Archive: ckDigest}); *ans != want || reads < 2 {
		t.Errorf("got %+v after %d reads of the Restore, want %+v after 2 or more", *ans, reads, want)
	}
}

// An API server that cannot answer is no refusal: the runtime gets a 503
// and tries again, not a 403 that says the pod may not restore.
func TestGrantAPIServerFailureIsNoRefusal(t *testing.T) {
	down := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	funcs := &interceptor.Funcs{Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
		return down
	}}
	_, err := testGrants(t, funcs).Resolve(context.Background(), wire.GrantRequest{
		Namespace: "shop", Pod: "web", PodUID: "uid-web", Container: "app"})
	if !errors.Is(err, down) || errors.Is(err, errGrant) || statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("got %v (%d), want the API server's error, no refusal, and 503", err, statusOf(err))
	}
}

// farPeers stands in for the agents of other nodes: it records what it was
// asked to fetch.
type farPeers struct{ fetched []string }

func (p *farPeers) Fetch(_ context.Context, node, image string) error {
	p.fetched = append(p.fetched, node+" "+image)
	return nil
}

func (p *farPeers) Remote(_ context.Context, node, image string) (string, *registry.Pinned, error) {
	return node + ":9443/" + image, &registry.Pinned{Subject: "system:node:" + node, Token: "t"}, nil
}

// A checkpoint kept in another node's store is fetched from that node's
// agent, unless this node's store holds it already (a store both share)
// or its pod is marked never to leave its node.
func TestGrantCheckpointOnAnotherNode(t *testing.T) {
	const far = "localhost/stasis-ckpt/shop/ck-far:app" // a node store's name: no digest
	ck := func(name string, ann map[string]string) *stasisv1.Checkpoint {
		return &stasisv1.Checkpoint{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:       stasisv1.CheckpointSpec{PodName: "web"},
			Status: stasisv1.CheckpointStatus{Phase: stasisv1.PhaseSucceeded, NodeName: "n2",
				Containers:  []stasisv1.ContainerCheckpoint{{Name: "app", Image: far}},
				PodTemplate: &corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: ann}}},
		}
	}
	restore := func(name, ck string) *stasisv1.Restore {
		return &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:   stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: ck}, PodName: "web"},
			Status: stasisv1.RestoreStatus{PodUID: "uid-web"}}
	}
	objs := []client.Object{ck("ck-far", nil), ck("ck-stays", map[string]string{policy.Migrate: policy.Never}),
		restore("far", "ck-far"), restore("stays", "ck-stays")}
	for _, c := range []struct {
		name, grant string
		stored      bool
		peers       bool
		fetched     string
		refused     string
	}{
		{name: "fetched from its node", grant: "Restore/far", peers: true, fetched: "n2 " + far},
		{name: "in a store this node shares", grant: "Restore/far", stored: true},
		{name: "no peers", grant: "Restore/far", refused: "does not fetch from other nodes"},
		{name: "opted out", grant: "Restore/stays", peers: true, stored: false, refused: "stasis.dev/migrate=never"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := testGrants(t, nil, append(objs, grantPod(from(c.grant)))...)
			store, err := image.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if c.stored {
				img, err := random.Image(64, 1)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := store.Add(far, img, nil); err != nil {
					t.Fatal(err)
				}
			}
			g.Images = store
			p := &farPeers{}
			if c.peers {
				g.Peers = p
			}
			ans, err := g.Resolve(context.Background(), wire.GrantRequest{
				Namespace: "shop", Pod: "web", PodUID: "uid-web", Container: "app", Grant: c.grant})
			if c.refused != "" {
				if !errors.Is(err, errGrant) || !strings.Contains(err.Error(), c.refused) || len(p.fetched) > 0 {
					t.Fatalf("got %+v, %v, fetched %v; want a refusal saying %q and nothing fetched", ans, err, p.fetched, c.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ans.Image != far || strings.Join(p.fetched, ",") != c.fetched {
				t.Errorf("got image %q, fetched %v; want %q, fetched %q", ans.Image, p.fetched, far, c.fetched)
			}
		})
	}
}
