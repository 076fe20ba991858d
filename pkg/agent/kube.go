package agent

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeReview authenticates bearer tokens with the API server (TokenReview)
// and finds the caller's role there (SubjectAccessReview), as the kubelet
// does: a cluster decides, with RBAC, who may checkpoint. The rights are on
// the stasis.dev resource "checkpoints": "create" makes an admin, "get" a
// viewer (config/rbac has the ClusterRoles). Client certificates are still
// checked by TLS and read as CertOrToken reads them.
type KubeReview struct {
	client kubernetes.Interface
	certs  *CertOrToken
}

// NewKubeReview uses the kubeconfig at path (the agent's own identity,
// which needs create on tokenreviews and subjectaccessreviews).
func NewKubeReview(kubeconfig string) (*KubeReview, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &KubeReview{client: c, certs: &CertOrToken{tokens: map[string]Identity{}}}, nil
}

// Authenticate implements Authenticator.
func (k *KubeReview) Authenticate(r *http.Request) (*Identity, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return k.certs.Authenticate(r)
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, fmt.Errorf("authorization header is not a bearer token")
	}
	ctx := r.Context()
	tr, err := k.client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		return nil, fmt.Errorf("the API server does not know the token")
	}
	u := tr.Status.User
	id := &Identity{User: u.Username, Via: "kubernetes token"}
	for _, c := range []struct {
		verb string
		role Role
	}{{"create", Admin}, {"get", Viewer}} {
		allowed, err := k.allowed(ctx, u, c.verb)
		if err != nil {
			return nil, err
		}
		if allowed {
			id.Role = c.role
			break
		}
	}
	return id, nil
}

func (k *KubeReview) allowed(ctx context.Context, u authnv1.UserInfo, verb string) (bool, error) {
	extra := map[string]authzv1.ExtraValue{}
	for key, v := range u.Extra {
		extra[key] = authzv1.ExtraValue(v)
	}
	sar, err := k.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Group: "stasis.dev", Resource: "checkpoints", Verb: verb},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("access review: %w", err)
	}
	return sar.Status.Allowed, nil
}
