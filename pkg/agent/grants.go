package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// GrantRequest is what the RuntimeClass's runtime (stasis-runc) asks the
// node's agent, over the node socket, before it restores a container: the
// pod and container the CRI runtime is creating, and the grant the pod's
// annotation AnnotationRestoreFrom names.
type GrantRequest struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"podUID"`
	Container string `json:"container"`
	Grant     string `json:"grant"`
}

// GrantAnswer says what to restore, and what its signature must say.
type GrantAnswer struct {
	// Restore false: the grant names no checkpoint for this container,
	// which is then created as usual.
	Restore bool `json:"restore"`
	// Image is the checkpoint image: a name in this node's store or a
	// registry reference.
	Image string `json:"image,omitempty"`
	// Namespace is the namespace the checkpoint must be signed for by the
	// cluster's key; Container and Archive (a sha256 digest, when the
	// Checkpoint recorded one) what the signature must bind too.
	Namespace string `json:"namespace,omitempty"`
	Container string `json:"container,omitempty"`
	Archive   string `json:"archive,omitempty"`
	LazyPages bool   `json:"lazyPages,omitempty"`
}

// Grants resolves grants against the API server: the authority for which
// checkpoint a pod may restore is there, never in the pod's annotations
// alone (a pod author picks those, and the node it runs on).
type Grants struct {
	// Client reads pods, Restores, WarmStarts and Checkpoints.
	Client client.Reader
	// NodeName is this node: only its own pods are answered for.
	NodeName string
}

// NewGrants resolves grants for node with the API server rc reaches. Its
// reads are not cached: a grant deleted a moment ago must not be honoured.
func NewGrants(rc *rest.Config, node string) (*Grants, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := stasisv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Grants{Client: c, NodeName: node}, nil
}

// errGrant is a refusal the caller made: 403 with its reason.
var errGrant = errors.New("refused")

func grantRefused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errGrant, fmt.Sprintf(format, args...))
}

// Resolve checks that the pod is on this node and names the grant, that
// the grant exists in the pod's namespace and is for this pod, and says
// which checkpoint image the container restores.
func (g *Grants) Resolve(ctx context.Context, req GrantRequest) (*GrantAnswer, error) {
	grant, err := stasisv1.ParseGrant(req.Grant)
	if err != nil {
		return nil, grantRefused("%v", err)
	}
	pod, err := g.pod(ctx, req, grant)
	if err != nil {
		return nil, err
	}
	ans := &GrantAnswer{LazyPages: pod.Annotations[stasisv1.AnnotationLazyPages] == "true"}
	var ref *stasisv1.CheckpointReference
	switch grant.Kind {
	case stasisv1.GrantRestore:
		var rs stasisv1.Restore
		if err := g.get(ctx, req.Namespace, grant.Name, &rs, grant); err != nil {
			return nil, err
		}
		if rs.Spec.PodName != pod.Name {
			return nil, grantRefused("restore %s/%s is for pod %s, not %s", req.Namespace, rs.Name, rs.Spec.PodName, pod.Name)
		}
		ref, ans.LazyPages = &rs.Spec.CheckpointRef, ans.LazyPages || rs.Spec.LazyPages
	case stasisv1.GrantWarmStart:
		var ws stasisv1.WarmStart
		if err := g.get(ctx, req.Namespace, grant.Name, &ws, grant); err != nil {
			return nil, err
		}
		ans.LazyPages = ans.LazyPages || ws.Spec.LazyPages
		if ws.Spec.CheckpointRef == nil {
			// An image from outside the cluster: its signature decides,
			// and one by the cluster's key must be for this namespace.
			ans.Image, ans.Namespace = ws.Spec.Images[req.Container], req.Namespace
			ans.Restore = ans.Image != ""
			return ans, nil
		}
		ref = ws.Spec.CheckpointRef
	}
	ns := ref.Namespace
	if ns == "" {
		ns = req.Namespace
	}
	var ck stasisv1.Checkpoint
	if err := g.get(ctx, ns, ref.Name, &ck, stasisv1.Grant{Kind: "Checkpoint", Name: ref.Name}); err != nil {
		return nil, err
	}
	if ck.Status.Phase != stasisv1.PhaseSucceeded {
		return nil, grantRefused("checkpoint %s/%s is %s, not Succeeded", ns, ck.Name, ck.Status.Phase)
	}
	for _, c := range ck.Status.Containers {
		if c.Name == req.Container {
			ans.Restore, ans.Image, ans.Namespace, ans.Container, ans.Archive = true, c.Image, ns, c.Name, c.Digest
		}
	}
	return ans, nil
}

// pod is the pod being created, checked against what the request says.
func (g *Grants) pod(ctx context.Context, req GrantRequest, grant stasisv1.Grant) (*corev1.Pod, error) {
	var pod corev1.Pod
	if err := g.Client.Get(ctx, client.ObjectKey{Namespace: req.Namespace, Name: req.Pod}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, grantRefused("pod %s/%s does not exist", req.Namespace, req.Pod)
		}
		return nil, fmt.Errorf("pod %s/%s: %w", req.Namespace, req.Pod, err)
	}
	switch {
	case req.PodUID != "" && string(pod.UID) != req.PodUID:
		return nil, grantRefused("pod %s/%s has UID %s, not %s", req.Namespace, req.Pod, pod.UID, req.PodUID)
	case pod.Spec.NodeName != g.NodeName:
		return nil, grantRefused("pod %s/%s is bound to node %q, not this node (%s)", req.Namespace, req.Pod, pod.Spec.NodeName, g.NodeName)
	case pod.Annotations[stasisv1.AnnotationRestoreFrom] != grant.String():
		return nil, grantRefused("pod %s/%s does not name %s in %s", req.Namespace, req.Pod, grant, stasisv1.AnnotationRestoreFrom)
	}
	return &pod, nil
}

func (g *Grants) get(ctx context.Context, ns, name string, obj client.Object, what stasisv1.Grant) error {
	if err := g.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return grantRefused("%s does not exist in namespace %s", what, ns)
		}
		return fmt.Errorf("%s in namespace %s: %w", what, ns, err)
	}
	return nil
}

// nodeRoutes registers what node-local callers (stasis-runc, over the
// node socket) may ask.
func (s *Server) nodeRoutes() {
	s.nodeRoute("POST /v1/grants/resolve", "resolve-grant", func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		var req GrantRequest
		if err := decode(r, &req); err != nil {
			return "", err
		}
		target := req.Namespace + "/" + req.Pod + "/" + req.Container
		if s.cfg.Grants == nil {
			return target, fmt.Errorf("%w: this agent is not in a cluster (start it with --kubeconfig or --in-cluster)", errBadRequest)
		}
		ans, err := s.cfg.Grants.Resolve(r.Context(), req)
		if errors.Is(err, errGrant) {
			err = fmt.Errorf("%w: %v", errForbidden, err)
		}
		if err != nil {
			return target, err
		}
		return target, writeJSON(w, http.StatusOK, ans)
	})
}
