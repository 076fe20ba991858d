package controller

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/stasis-dev/stasis/pkg/agent"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
)

// AgentClients reach the agent of a node at https://<InternalIP>:<Port>
// (the DaemonSet runs in the host network), authenticated with a token of
// the controller's ServiceAccount for the audience "stasis-agent", which
// the agent reviews with the API server.
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
	// TokenFile is read on every call: projected tokens rotate.
	TokenFile string
}

// CheckpointPod implements Agents.
func (a *AgentClients) CheckpointPod(ctx context.Context, node *corev1.Node, req podcheckpoint.Request) (*podcheckpoint.Result, error) {
	addr := nodeAddress(node)
	if addr == "" {
		return nil, fmt.Errorf("node %s has no InternalIP to reach its stasis agent", node.Name)
	}
	token, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("agent token: %w", err)
	}
	base := "https://" + net.JoinHostPort(addr, strconv.Itoa(a.Port))
	c, err := agent.NewClient(base, agent.ClientOptions{CA: a.CA, Token: strings.TrimSpace(string(token)),
		VerifyPeer: nodeIdentity(node.Name)})
	if err != nil {
		return nil, err
	}
	var res podcheckpoint.Result
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
