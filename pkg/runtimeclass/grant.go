package runtimeclass

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// podRef is the pod and container a spec belongs to, as the CRI runtime
// recorded them in the spec's annotations.
type podRef struct {
	Namespace, Name, UID, Container string
	// Grant is the pod's AnnotationRestoreFrom as far as the runtime
	// passed it on (containerd's pod_annotations do; CRI-O may not): a
	// hint the agent checks against the pod, which it reads itself.
	Grant string
}

// podOf reads the pod of a container's spec, from the keys only the
// runtime itself writes: CRI-O's labels (the kubelet's, as JSON), or
// containerd's io.kubernetes.cri.* (a pod's own annotations reach the
// spec only through pod_annotations, which name stasis' keys alone).
func podOf(spec *ociSpec) podRef {
	p := podRef{Container: containerName(spec), Grant: strings.TrimSpace(spec.Annotations[stasisv1.AnnotationRestoreFrom])}
	if crio, ok := spec.Annotations["io.kubernetes.cri-o.Labels"]; ok {
		var labels map[string]string
		if json.Unmarshal([]byte(crio), &labels) == nil {
			p.Namespace, p.Name, p.UID = labels["io.kubernetes.pod.namespace"], labels["io.kubernetes.pod.name"], labels["io.kubernetes.pod.uid"]
		}
		return p
	}
	a := spec.Annotations
	p.Namespace, p.Name, p.UID = a["io.kubernetes.cri.sandbox-namespace"], a["io.kubernetes.cri.sandbox-name"], a["io.kubernetes.cri.sandbox-uid"]
	return p
}

// resolveGrant asks the node's agent which checkpoint the grant gives
// this container.
func (w *wrapper) resolveGrant(ctx context.Context, p podRef) (*wire.GrantAnswer, error) {
	c := wire.NewSocketClient(w.cfg.AgentSocket)
	var ans wire.GrantAnswer
	req := wire.GrantRequest{Namespace: p.Namespace, Pod: p.Name, PodUID: p.UID, Container: p.Container, Grant: p.Grant}
	if err := c.Do(ctx, http.MethodPost, "/v1/grants/resolve", req, &ans); err != nil {
		return nil, fmt.Errorf("the grant of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if ans.Restore && (ans.Image == "" || ans.Namespace == "") {
		return nil, fmt.Errorf("the grant of pod %s/%s: the agent named no image or namespace", p.Namespace, p.Name)
	}
	return &ans, nil
}
