package agent

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Role is what a caller may do.
type Role string

const (
	// Admin may checkpoint, restore, migrate, delete and read memory and
	// archive bytes.
	Admin Role = "admin"
	// Viewer may list and read metadata, never memory or archive bytes.
	Viewer Role = "viewer"
	// Peer is another node's agent: it may do what a viewer may, and read
	// the node's checkpoint images (the /v2/ registry API) to restore
	// them on its own node; it may not checkpoint, restore or delete.
	Peer Role = "peer"
)

// allows reports whether a caller of role r may do what needs role need.
func (r Role) allows(need Role) bool {
	return r == Admin || r == need || (r == Peer && need == Viewer)
}

// Identity is an authenticated caller.
type Identity struct {
	User string `json:"user"`
	Role Role   `json:"role"`
	// Via is how the caller proved who it is: "certificate", "token",
	// "kubernetes token" or "node socket"; operations belong to a user
	// by name and Via.
	Via string `json:"via"`
}

// Authenticator finds who makes a request. nil with no error means no
// credentials were given.
type Authenticator interface {
	Authenticate(r *http.Request) (*Identity, error)
}

// CertOrToken accepts a client certificate verified by the server's TLS
// (its CN is the user; an organisation "stasis:admin" or "stasis:viewer" is
// the role, as Kubernetes reads groups) or a bearer token from a tokens file.
type CertOrToken struct {
	tokens map[string]Identity
}

// tokenFile is {"<token>": {"user": "alice", "role": "admin"}, ...}.
type tokenFile map[string]Identity

// NewCertOrToken reads tokensPath (empty: certificates only).
func NewCertOrToken(tokensPath string) (*CertOrToken, error) {
	a := &CertOrToken{tokens: map[string]Identity{}}
	if tokensPath == "" {
		return a, nil
	}
	b, err := os.ReadFile(tokensPath)
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	var tf tokenFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return nil, fmt.Errorf("tokens %s: %w", tokensPath, err)
	}
	for tok, id := range tf {
		if len(tok) < 16 {
			return nil, fmt.Errorf("tokens %s: the token of %s is shorter than 16 characters", tokensPath, id.User)
		}
		if id.Role != Admin && id.Role != Viewer {
			return nil, fmt.Errorf("tokens %s: %s has role %q (want admin or viewer)", tokensPath, id.User, id.Role)
		}
		id.Via = "token"
		a.tokens[tok] = id
	}
	return a, nil
}

// Authenticate implements Authenticator.
func (a *CertOrToken) Authenticate(r *http.Request) (*Identity, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil, fmt.Errorf("authorization header is not a bearer token")
		}
		for known, id := range a.tokens {
			if subtle.ConstantTimeCompare([]byte(known), []byte(tok)) == 1 {
				id := id
				return &id, nil
			}
		}
		return nil, fmt.Errorf("unknown token")
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		cert := r.TLS.VerifiedChains[0][0]
		id := &Identity{User: cert.Subject.CommonName, Via: "certificate"}
		for _, o := range cert.Subject.Organization {
			switch o {
			case "stasis:admin":
				id.Role = Admin
			case "stasis:viewer":
				if id.Role == "" {
					id.Role = Viewer
				}
			}
		}
		return id, nil
	}
	return nil, nil
}
