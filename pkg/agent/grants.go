package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// Grants resolves grants against the API server: the authority for which
// checkpoint a pod may restore is there, never in the pod's annotations
// alone (a pod author picks those, and the node it runs on).
type Grants struct {
	// Client reads pods, Restores, WarmStarts and Checkpoints.
	Client client.Reader
	// NodeName is this node: only its own pods are answered for.
	NodeName string
	// Images, when set, is this node's store: a checkpoint kept on
	// another node that it holds already (a store both share, on a
	// network mount; one fetched earlier) is restored from here.
	Images interface {
		Get(ref string) (*image.Image, error)
	}
	// Peers, when set, fetches a checkpoint kept in another node's store,
	// and not in this one's, before the answer names it; without it such
	// a checkpoint is refused.
	Peers interface {
		Fetch(ctx context.Context, node, image string) error
		Remote(ctx context.Context, node, image string) (string, *registry.Pinned, error)
	}
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

// Resolve checks that the pod is on this node, finds the grant its
// annotation names in its namespace, checks that the grant is for this
// pod, and says which checkpoint image the container restores.
func (g *Grants) Resolve(ctx context.Context, req wire.GrantRequest) (*wire.GrantAnswer, error) {
	pod, err := g.pod(ctx, req)
	if err != nil {
		return nil, err
	}
	from := pod.Annotations[stasisv1.AnnotationRestoreFrom]
	if legacy := stasisv1.LegacyRestoreAnnotations(pod.Annotations); len(legacy) > 0 {
		return nil, grantRefused("pod %s/%s: annotation %s names a checkpoint directly, which is never honoured: "+
			"a pod restores only through a grant, %s: Restore/<name> or WarmStart/<name>", req.Namespace, req.Pod, legacy[0], stasisv1.AnnotationRestoreFrom)
	}
	if req.Grant != "" && req.Grant != from {
		return nil, grantRefused("pod %s/%s names %q in %s, not %q", req.Namespace, req.Pod, from, stasisv1.AnnotationRestoreFrom, req.Grant)
	}
	if from == "" {
		return &wire.GrantAnswer{}, nil
	}
	grant, err := stasisv1.ParseGrant(from)
	if err != nil {
		return nil, grantRefused("pod %s/%s: %v", req.Namespace, req.Pod, err)
	}
	ans := &wire.GrantAnswer{LazyPages: pod.Annotations[stasisv1.AnnotationLazyPages] == "true"}
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
		if err := g.createdBy(ctx, &rs, pod); err != nil {
			return nil, err
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
		if c.Name == req.Container && c.Image != "" {
			ans.Restore, ans.Image, ans.Namespace, ans.Container, ans.Archive = true, c.Image, ns, c.Name, c.Digest
		}
	}
	if ans.Restore && !strings.Contains(ans.Image, "@sha256:") && ck.Status.NodeName != g.NodeName {
		stored, err := g.stored(ans.Image)
		if err != nil {
			return nil, err
		}
		if !stored {
			if err := g.fetch(ctx, &ck, ans); err != nil {
				return nil, err
			}
		}
	}
	return ans, nil
}

// stored says whether this node's store holds name already.
func (g *Grants) stored(name string) (bool, error) {
	if g.Images == nil {
		return false, nil
	}
	_, err := g.Images.Get(name)
	if errors.Is(err, image.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// fetch brings a checkpoint image kept in the store of the checkpoint's
// node into this node's, or, for a lazy restore, points the answer at it
// there (the pages are read where they lie, and the image is stored here
// once complete). What is read is only ever what a Checkpoint's status
// names, from the node it names; stasis-runc verifies its signature
// before it restores it, as any other.
func (g *Grants) fetch(ctx context.Context, ck *stasisv1.Checkpoint, ans *wire.GrantAnswer) error {
	if ck.Status.NodeName == "" {
		return grantRefused("checkpoint %s/%s is kept in a node's store but records no node", ck.Namespace, ck.Name)
	}
	// The source node's registry refuses it too; refused here first,
	// with the reason, rather than as a peer's 403.
	if err := mayLeaveNode(ck); err != nil {
		return grantRefused("%v", err)
	}
	if g.Peers == nil {
		return grantRefused("checkpoint %s/%s is kept on node %s, and this agent does not fetch from other nodes (start it with --peer-ca)",
			ck.Namespace, ck.Name, ck.Status.NodeName)
	}
	if !ans.LazyPages {
		return unavailable(g.Peers.Fetch(ctx, ck.Status.NodeName, ans.Image))
	}
	ref, p, err := g.Peers.Remote(ctx, ck.Status.NodeName, ans.Image)
	if err != nil {
		return unavailable(err)
	}
	ans.Image, ans.Peer = ref, &wire.PeerRegistry{CA: p.CA, Subject: p.Subject, Organization: p.Organization, Token: p.Token}
	return nil
}

// mayLeaveNode refuses a checkpoint whose pod is marked never to leave
// its node (stasis.dev/migrate=never): other nodes neither fetch it nor
// are served it.
func mayLeaveNode(ck *stasisv1.Checkpoint) error {
	if t := ck.Status.PodTemplate; t != nil {
		return policy.MayCheckpoint("pod "+ck.Namespace+"/"+ck.Spec.PodName, t.Annotations, true)
	}
	return nil
}

// createdBy checks that the Restore created pod: its status (which only
// the controller writes) names the pod's UID. The controller records it
// just after creating the pod, which can be after the node starts it.
func (g *Grants) createdBy(ctx context.Context, rs *stasisv1.Restore, pod *corev1.Pod) error {
	deadline := time.Now().Add(recordWait)
	for rs.Status.PodUID == "" && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if err := g.get(ctx, rs.Namespace, rs.Name, rs, stasisv1.Grant{Kind: stasisv1.GrantRestore, Name: rs.Name}); err != nil {
			return err
		}
	}
	if rs.Status.PodUID != pod.UID {
		return grantRefused("restore %s/%s created pod %s with UID %q, not this one (%s)", rs.Namespace, rs.Name, pod.Name, rs.Status.PodUID, pod.UID)
	}
	return nil
}

// recordWait bounds the wait for a Restore to record the pod it created;
// a var so that tests can shorten it.
var recordWait = 15 * time.Second

// pod is the pod being created, checked against what the request says.
func (g *Grants) pod(ctx context.Context, req wire.GrantRequest) (*corev1.Pod, error) {
	var pod corev1.Pod
	if err := g.Client.Get(ctx, client.ObjectKey{Namespace: req.Namespace, Name: req.Pod}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, grantRefused("pod %s/%s does not exist", req.Namespace, req.Pod)
		}
		return nil, fmt.Errorf("pod %s/%s: %w", req.Namespace, req.Pod, unavailable(err))
	}
	switch {
	case req.PodUID == "":
		return nil, grantRefused("the runtime did not say which pod %s/%s it is creating (no pod UID)", req.Namespace, req.Pod)
	case string(pod.UID) != req.PodUID:
		return nil, grantRefused("pod %s/%s has UID %s, not %s", req.Namespace, req.Pod, pod.UID, req.PodUID)
	case pod.Spec.NodeName != g.NodeName:
		return nil, grantRefused("pod %s/%s is bound to node %q, not this node (%s)", req.Namespace, req.Pod, pod.Spec.NodeName, g.NodeName)
	}
	return &pod, nil
}

func (g *Grants) get(ctx context.Context, ns, name string, obj client.Object, what stasisv1.Grant) error {
	if err := g.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return grantRefused("%s does not exist in namespace %s", what, ns)
		}
		return fmt.Errorf("%s in namespace %s: %w", what, ns, unavailable(err))
	}
	return nil
}

// nodeRoutes registers what node-local callers (stasis-runc, over the
// node socket) may ask.
func (s *Server) nodeRoutes() {
	s.nodeRoute("POST /v1/grants/resolve", "resolve-grant", func(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
		var req wire.GrantRequest
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
