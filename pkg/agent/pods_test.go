package agent

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
	"github.com/stasis-dev/stasis/pkg/wire"
)

func testPod(name, node string, annotations map[string]string) *corev1.Pod {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Annotations: annotations},
		Spec: corev1.PodSpec{NodeName: node,
			InitContainers: []corev1.Container{{Name: "init"}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "sidecar"}, {Name: "late"}}},
		Status: corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "init", ContainerID: "containerd://i0"}},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "app", ContainerID: "containerd://a1", State: running},
				{Name: "sidecar", ContainerID: "cri-o://s2", State: running},
				{Name: "late", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{}}},
			}},
	}
}

func TestPodContainersComeFromTheAPIServer(t *testing.T) {
	s := testServer(t, Config{NodeName: "n1", Kube: fake.NewClientset(
		testPod("web", "n1", nil),
		testPod("away", "n2", nil),
		testPod("secret", "n1", map[string]string{"stasis.dev/checkpoint": "never"}),
		testPod("local", "n1", map[string]string{"stasis.dev/migrate": "never"}),
	)})
	ctrs := func(names ...string) []wire.PodContainer {
		var cs []wire.PodContainer
		for _, n := range names {
			cs = append(cs, wire.PodContainer{Name: n})
		}
		return cs
	}
	for _, c := range []struct {
		what string
		req  wire.PodCheckpointRequest
		code int
		want []wire.PodContainer
	}{
		{"named", wire.PodCheckpointRequest{Pod: "web", Containers: ctrs("sidecar")}, 0,
			[]wire.PodContainer{{Name: "sidecar", ID: "s2"}}},
		{"the right ID", wire.PodCheckpointRequest{Pod: "web", Containers: []wire.PodContainer{{Name: "app", ID: "a1"}}}, 0,
			[]wire.PodContainer{{Name: "app", ID: "a1"}}},
		{"another ID", wire.PodCheckpointRequest{Pod: "web", Containers: []wire.PodContainer{{Name: "app", ID: "s2"}}}, http.StatusBadRequest, nil},
		{"not running", wire.PodCheckpointRequest{Pod: "web", Containers: ctrs("app", "late")}, http.StatusBadRequest, nil},
		{"all of a pod with one waiting", wire.PodCheckpointRequest{Pod: "web"}, http.StatusBadRequest, nil},
		{"an init container", wire.PodCheckpointRequest{Pod: "web", Containers: ctrs("init")}, http.StatusBadRequest, nil},
		{"no such container", wire.PodCheckpointRequest{Pod: "web", Containers: ctrs("db")}, http.StatusBadRequest, nil},
		{"twice", wire.PodCheckpointRequest{Pod: "web", Containers: ctrs("app", "app")}, http.StatusBadRequest, nil},
		{"no such pod", wire.PodCheckpointRequest{Pod: "gone"}, http.StatusNotFound, nil},
		{"another node", wire.PodCheckpointRequest{Pod: "away", Containers: ctrs("app")}, http.StatusBadRequest, nil},
		{"opted out", wire.PodCheckpointRequest{Pod: "secret", Containers: ctrs("app")}, http.StatusForbidden, nil},
		{"staying", wire.PodCheckpointRequest{Pod: "local", Containers: ctrs("app")}, 0,
			[]wire.PodContainer{{Name: "app", ID: "a1"}}},
		{"leaving", wire.PodCheckpointRequest{Pod: "local", Containers: ctrs("app"), Repository: "registry.local/x"}, http.StatusForbidden, nil},
	} {
		req := c.req
		req.Namespace = "shop"
		err := s.podContainers(context.Background(), &req)
		switch {
		case c.code == 0 && err != nil:
			t.Errorf("%s: %v", c.what, err)
		case c.code == 0 && !slices.Equal(req.Containers, c.want):
			t.Errorf("%s: %+v, want %+v", c.what, req.Containers, c.want)
		case c.code != 0 && (err == nil || statusOf(err) != c.code):
			t.Errorf("%s: %v, want %d", c.what, err, c.code)
		}
	}

	// All containers when none is named: not the init container.
	s = testServer(t, Config{NodeName: "n1", Kube: fake.NewClientset(func() *corev1.Pod {
		p := testPod("web", "n1", nil)
		p.Spec.Containers = p.Spec.Containers[:2]
		return p
	}())})
	req := wire.PodCheckpointRequest{Namespace: "shop", Pod: "web"}
	if err := s.podContainers(context.Background(), &req); err != nil ||
		!slices.Equal(req.Containers, []wire.PodContainer{{Name: "app", ID: "a1"}, {Name: "sidecar", ID: "s2"}}) {
		t.Fatalf("all containers: %+v %v", req.Containers, err)
	}
}

func TestPodCheckpointNeedsTheAPIServer(t *testing.T) {
	s := testServer(t, Config{Pods: &podcheckpoint.Checkpointer{}})
	w := do(s.Handler(), "POST", "/v1/pods/shop/web/checkpoint", "alice-0123456789", `{"name": "c1"}`)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "does not checkpoint pods") {
		t.Fatalf("without an API server: %d %s", w.Code, w.Body)
	}
}
