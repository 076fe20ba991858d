package controller

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/stasis-dev/stasis/pkg/wire"
)

// AgentClients reach the agent of a node at https://<InternalIP>:<Port>
// (the DaemonSet runs in the host network), authenticated with a token of
// the controller's ServiceAccount for that node's agent alone (audience
// wire.Audience(node)), which the agent reviews with the API server.
//
// The address is what the node reports, so it proves nothing: before the
// token is sent, the agent's certificate must chain to CA and be the
// node's own (the kubelet's serving certificate, subject
// system:node:<node>), which no other node holds.
type AgentClients struct {
	Port int
	// CA verifies the agents' serving certificates (PEM file): the
	// cluster CA that signs the kubelets' serving certificates.
	CA string
	// Tokens mints the tokens.
	Tokens TokenSource
}

// TokenSource gives a bearer token for the agent of a node.
type TokenSource interface {
	Token(ctx context.Context, node string) (string, error)
}

// ServiceAccountTokens are tokens of the ServiceAccount Namespace/Name,
// one audience per node, from the API server's TokenRequest API (the
// controller may create tokens of its own ServiceAccount only). A token
// is reused while it has more than half of its ten minutes left.
type ServiceAccountTokens struct {
	Client          corev1client.ServiceAccountsGetter
	Namespace, Name string

	mu     sync.Mutex
	tokens map[string]authnv1.TokenRequestStatus
}

// Token implements TokenSource.
func (s *ServiceAccountTokens) Token(ctx context.Context, node string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	const life = 10 * time.Minute
	if t, ok := s.tokens[node]; ok && time.Until(t.ExpirationTimestamp.Time) > life/2 {
		return t.Token, nil
	}
	secs := int64(life / time.Second)
	tr, err := s.Client.ServiceAccounts(s.Namespace).CreateToken(ctx, s.Name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{wire.Audience(node)}, ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of %s/%s for the agent of node %s: %w", s.Namespace, s.Name, node, err)
	}
	if s.tokens == nil {
		s.tokens = map[string]authnv1.TokenRequestStatus{}
	}
	s.tokens[node] = tr.Status
	return tr.Status.Token, nil
}

// CheckpointPod implements Agents.
func (a *AgentClients) CheckpointPod(ctx context.Context, node *corev1.Node, req wire.PodCheckpointRequest) (*wire.PodCheckpointResult, error) {
	addr := nodeAddress(node)
	if addr == "" {
		return nil, fmt.Errorf("node %s has no InternalIP to reach its stasis agent", node.Name)
	}
	if a.CA == "" {
		return nil, fmt.Errorf("no CA to verify the agent of node %s with (--agent-ca)", node.Name)
	}
	token, err := a.Tokens.Token(ctx, node.Name)
	if err != nil {
		return nil, err
	}
	base := "https://" + net.JoinHostPort(addr, strconv.Itoa(a.Port))
	c, err := wire.NewClient(base, wire.ClientOptions{CA: a.CA, Token: token, VerifyPeer: nodeIdentity(node.Name)})
	if err != nil {
		return nil, err
	}
	var res wire.PodCheckpointResult
	path := fmt.Sprintf("/v1/pods/%s/%s/checkpoint", url.PathEscape(req.Namespace), url.PathEscape(req.Pod))
	if err := c.Do(ctx, http.MethodPost, path, req, &res); err != nil {
		return nil, fmt.Errorf("stasis agent on node %s: %w", node.Name, err)
	}
	return &res, nil
}

// nodeIdentity accepts only the certificate the cluster CA issued to node,
// as the API server checks a kubelet's.
func nodeIdentity(node string) func(*x509.Certificate) error {
	want := "system:node:" + node
	return func(c *x509.Certificate) error {
		if c.Subject.CommonName != want || !slices.Contains(c.Subject.Organization, "system:nodes") {
			return fmt.Errorf("the agent's certificate is %q (organisation %v), not node %s's (%s, system:nodes)",
				c.Subject.CommonName, c.Subject.Organization, node, want)
		}
		return nil
	}
}

func nodeAddress(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
