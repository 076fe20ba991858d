package agent

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// fakeAPIServer knows tokens by the audiences they were issued for, and
// lets "admin" create checkpoints; it counts the token reviews it answers.
// A token known with no audiences is authenticated with none, as by an
// authenticator that does not know audiences.
func fakeAPIServer(tokens map[string][]string) (*fake.Clientset, *int) {
	c := fake.NewClientset()
	reviews := new(int)
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		*reviews++
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		auds, known := tokens[tr.Spec.Token]
		for _, aud := range tr.Spec.Audiences {
			if slices.Contains(auds, aud) {
				tr.Status.Audiences = append(tr.Status.Audiences, aud)
			}
		}
		tr.Status.Authenticated = len(tr.Status.Audiences) > 0 || known && len(auds) == 0
		tr.Status.User.Username, _, _ = strings.Cut(tr.Spec.Token, "-")
		return true, tr, nil
	})
	c.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview).DeepCopy()
		sar.Status.Allowed = sar.Spec.User == "admin" && sar.Spec.ResourceAttributes.Verb == "create"
		return true, sar, nil
	})
	return c, reviews
}

func bearer(tok string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

func TestKubeReviewWantsTheAgentsAudience(t *testing.T) {
	c, reviews := fakeAPIServer(map[string][]string{
		"admin-agent":     {"stasis-agent"},
		"admin-apiserver": {"https://kubernetes.default.svc"},
		"admin-anyone":    {},
	})
	k, err := NewKubeReview(c, "stasis-agent")
	if err != nil {
		t.Fatal(err)
	}
	id, err := k.Authenticate(bearer("admin-agent"))
	if err != nil || id.User != "admin" || id.Role != Admin {
		t.Fatalf("a token for the agent: %+v %v", id, err)
	}
	if id, err := k.Authenticate(bearer("admin-apiserver")); err == nil {
		t.Fatalf("a token for the API server was accepted: %+v", id)
	}
	// Authenticated, but for no audience the API server names: refused
	// by the agent's own check, and asked about again.
	before := *reviews
	for range 2 {
		if id, err := k.Authenticate(bearer("admin-anyone")); err == nil || !strings.Contains(err.Error(), `audience "stasis-agent"`) {
			t.Fatalf("a token authenticated for no audience: %+v %v", id, err)
		}
	}
	if *reviews != before+2 {
		t.Fatalf("%d token reviews for a refused token asked twice, want 2", *reviews-before)
	}
	if _, err := NewKubeReview(c, ""); err == nil {
		t.Fatal("a review without an audience was made")
	}
}

func TestKubeReviewCachesSuccessesOnly(t *testing.T) {
	c, reviews := fakeAPIServer(map[string][]string{"admin-1": {"stasis-agent"}, "viewer-1": {"stasis-agent"}})
	k, err := NewKubeReview(c, "stasis-agent")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if id, err := k.Authenticate(bearer("admin-1")); err != nil || id.Role != Admin {
			t.Fatalf("admin: %+v %v", id, err)
		}
	}
	if *reviews != 1 {
		t.Fatalf("%d token reviews for one token, want 1", *reviews)
	}
	for range 2 {
		if _, err := k.Authenticate(bearer("unknown-1")); err == nil {
			t.Fatal("an unknown token was accepted")
		}
	}
	if *reviews != 3 {
		t.Fatalf("%d token reviews, want a failed review asked again", *reviews)
	}
	// An authenticated caller without rights is remembered without them.
	if id, err := k.Authenticate(bearer("viewer-1")); err != nil || id.Role != "" {
		t.Fatalf("viewer-1 without rights: %+v %v", id, err)
	}
	k.cache.entries = map[[sha256.Size]byte]cached{}
	k.Authenticate(bearer("admin-1"))
	// Its review expired an hour ago, with no sleep.
	k.cache.mu.Lock()
	for key, e := range k.cache.entries {
		e.expires = time.Now().Add(-time.Hour)
		k.cache.entries[key] = e
	}
	k.cache.mu.Unlock()
	k.Authenticate(bearer("admin-1"))
	if *reviews != 6 {
		t.Fatalf("%d token reviews, want an expired review asked again", *reviews)
	}
	// The new review is remembered for the cache's ttl.
	if id, err := k.Authenticate(bearer("admin-1")); err != nil || id.Role != Admin || *reviews != 6 {
		t.Fatalf("admin after its review was renewed: %+v %v, %d token reviews, want 6", id, err, *reviews)
	}
}

func TestReviewCacheIsBounded(t *testing.T) {
	c := newReviewCache(time.Minute, 2)
	for i, tok := range []string{"a", "b", "c"} {
		key := sha256.Sum256([]byte(tok))
		c.put(key, Identity{User: tok})
		// Distinct expiry times, each later than the one before, with
		// no sleep.
		c.mu.Lock()
		e := c.entries[key]
		e.expires = e.expires.Add(time.Duration(i) * time.Second)
		c.entries[key] = e
		c.mu.Unlock()
	}
	if len(c.entries) != 2 {
		t.Fatalf("%d entries, want 2", len(c.entries))
	}
	if _, ok := c.get(sha256.Sum256([]byte("a"))); ok {
		t.Fatal("the oldest entry was kept")
	}
	for _, tok := range []string{"b", "c"} {
		if id, ok := c.get(sha256.Sum256([]byte(tok))); !ok || id.User != tok {
			t.Fatalf("%s: %+v %v", tok, id, ok)
		}
	}
}
