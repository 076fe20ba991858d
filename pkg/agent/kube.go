package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeConfig is how the agent reaches the API server as itself: the
// kubeconfig at path, or, with path "", the credentials of the pod the
// agent runs in. Token reviews and pod lookups share it.
func KubeConfig(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

// KubeReview authenticates bearer tokens with the API server (TokenReview)
// and finds the caller's role there (SubjectAccessReview), as the kubelet
// does: a cluster decides, with RBAC, who may checkpoint. The rights are on
// the stasis.dev resource "checkpoints": "create" makes an admin, the verb
// "fetch" on its subresource "images" a peer (the agents' own
// ServiceAccount: a verb of its own, so that no read-only role made of
// wildcards grants it), "get" a viewer (config/rbac has the ClusterRoles). Client certificates are still
// checked by TLS and read as CertOrToken reads them.
//
// Only tokens issued for the agent's audience are accepted: a token meant
// for the API server (a pod's default ServiceAccount token) is refused
// here, and a caller's token for the agent cannot be replayed against the
// API server.
type KubeReview struct {
	client   kubernetes.Interface
	audience string
	certs    *CertOrToken
	cache    *reviewCache
}

// NewKubeReview reviews tokens with client, whose identity needs create on
// tokenreviews and subjectaccessreviews; tokens must be issued for
// audience.
func NewKubeReview(client kubernetes.Interface, audience string) (*KubeReview, error) {
	if audience == "" {
		return nil, errors.New("token review: an audience is required, or the API server's own tokens would be accepted")
	}
	return &KubeReview{client: client, audience: audience, certs: &CertOrToken{tokens: map[string]Identity{}},
		cache: newReviewCache(30*time.Second, 1024)}, nil
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
	key := sha256.Sum256([]byte(tok))
	if id, ok := k.cache.get(key); ok {
		return &id, nil
	}
	id, err := k.review(r.Context(), tok)
	if err != nil {
		return nil, err
	}
	k.cache.put(key, *id)
	return id, nil
}

// review asks the API server who tok is and what it may do.
func (k *KubeReview) review(ctx context.Context, tok string) (*Identity, error) {
	tr, err := k.client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{k.audience}}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token review: %w", err)
	}
	// Status.Audiences are those of ours the token is valid for; an
	// authenticator that does not know audiences leaves them empty, which
	// means the token is the API server's: refused too.
	if !tr.Status.Authenticated || !slices.Contains(tr.Status.Audiences, k.audience) {
		return nil, fmt.Errorf("the API server does not know the token for audience %q", k.audience)
	}
	u := tr.Status.User
	id := &Identity{User: u.Username, Via: "kubernetes token"}
	for _, c := range []struct {
		verb, subresource string
		role              Role
	}{{"create", "", Admin}, {"fetch", "images", Peer}, {"get", "", Viewer}} {
		allowed, err := k.allowed(ctx, u, c.verb, c.subresource)
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

func (k *KubeReview) allowed(ctx context.Context, u authnv1.UserInfo, verb, subresource string) (bool, error) {
	extra := map[string]authzv1.ExtraValue{}
	for key, v := range u.Extra {
		extra[key] = authzv1.ExtraValue(v)
	}
	sar, err := k.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Group: "stasis.dev", Resource: "checkpoints", Subresource: subresource, Verb: verb},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("access review: %w", err)
	}
	return sar.Status.Allowed, nil
}

// reviewCache remembers reviewed tokens for a short while: a controller
// polling an operation would otherwise cost three API requests a call. A
// token is kept by its hash only, and only a review that succeeded is
// kept, so a token the API server has not yet seen is asked about again.
// A revoked token or a changed role takes effect within ttl.
type reviewCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[[sha256.Size]byte]cached
}

type cached struct {
	id      Identity
	expires time.Time
}

func newReviewCache(ttl time.Duration, max int) *reviewCache {
	return &reviewCache{ttl: ttl, max: max, entries: map[[sha256.Size]byte]cached{}}
}

func (c *reviewCache) get(key [sha256.Size]byte) (Identity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || time.Now().After(e.expires) {
		delete(c.entries, key)
		return Identity{}, false
	}
	return e.id, true
}

// put keeps id for key; when full it drops the expired entries, then the
// oldest, so a flood of valid tokens cannot grow the agent.
func (c *reviewCache) put(key [sha256.Size]byte, id Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if len(c.entries) >= c.max {
		var oldest [sha256.Size]byte
		var oldestExpires time.Time
		for k, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, k)
			} else if oldestExpires.IsZero() || e.expires.Before(oldestExpires) {
				oldest, oldestExpires = k, e.expires
			}
		}
		if len(c.entries) >= c.max {
			delete(c.entries, oldest)
		}
	}
	c.entries[key] = cached{id: id, expires: now.Add(c.ttl)}
}
