package ociwrap

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/agent"
)

// podRef is the pod and container a spec belongs to, as the CRI runtime
// recorded them in the spec's annotations.
type podRef struct {
	Namespace, Name, UID, Container string
	// Grant is the pod's AnnotationRestoreFrom, "" when it has none.
	Grant string
}

// Annotations naming a container's pod: containerd's, then CRI-O's.
var (
	podNamespaceAnnotations = []string{"io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"}
	podNameAnnotations      = []string{"io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"}
	podUIDAnnotations       = []string{"io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"}
)

// podOf reads the pod of a container's spec. The grant comes from the pod
// annotations the runtime passes on (containerd's pod_annotations, CRI-O's
// allowed_annotations); the agent checks it against the pod itself.
func podOf(spec *ociSpec) podRef {
	first := func(keys []string) string {
		for _, k := range keys {
			if v := spec.Annotations[k]; v != "" {
				return v
			}
		}
		return ""
	}
	p := podRef{Namespace: first(podNamespaceAnnotations), Name: first(podNameAnnotations), UID: first(podUIDAnnotations),
		Container: containerName(spec), Grant: strings.TrimSpace(spec.Annotations[stasisv1.AnnotationRestoreFrom])}
	if p.Namespace == "" || p.Name == "" {
		// CRI-O: the kubelet's labels, as JSON.
		var labels map[string]string
		if json.Unmarshal([]byte(spec.Annotations["io.kubernetes.cri-o.Labels"]), &labels) == nil {
			p.Namespace, p.Name, p.UID = labels["io.kubernetes.pod.namespace"], labels["io.kubernetes.pod.name"], labels["io.kubernetes.pod.uid"]
		}
	}
	return p
}

// legacyRestoreAnnotations are restore.stasis.dev/ annotations other than
// the grant: once they named a checkpoint image directly, which is exactly
// what a pod author must not be able to do.
func legacyRestoreAnnotations(spec *ociSpec) []string {
	var keys []string
	for k := range spec.Annotations {
		if strings.HasPrefix(k, stasisv1.AnnotationPrefixRestore) && k != stasisv1.AnnotationRestoreFrom {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// resolveGrant asks the node's agent which checkpoint the grant gives
// this container.
func (w *wrapper) resolveGrant(ctx context.Context, p podRef) (*agent.GrantAnswer, error) {
	if p.Namespace == "" || p.Name == "" || p.Container == "" {
		return nil, fmt.Errorf("%s is set, but the container's spec does not say which pod and container it is", stasisv1.AnnotationRestoreFrom)
	}
	c := agent.NewSocketClient(w.cfg.AgentSocket)
	var ans agent.GrantAnswer
	req := agent.GrantRequest{Namespace: p.Namespace, Pod: p.Name, PodUID: p.UID, Container: p.Container, Grant: p.Grant}
	if err := c.Do(ctx, http.MethodPost, "/v1/grants/resolve", req, &ans); err != nil {
		return nil, fmt.Errorf("grant %s of pod %s/%s: %w", p.Grant, p.Namespace, p.Name, err)
	}
	return &ans, nil
}
