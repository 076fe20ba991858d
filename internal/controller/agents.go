package controller

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/stasis-dev/stasis/pkg/agent"
	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
)

// AgentClients reach the agent of a node at https://<InternalIP>:<Port>
// (the DaemonSet runs in the host network), authenticated with the
// controller's ServiceAccount token, which the agent reviews with the API
// server.
type AgentClients struct {
	Port int
	// CA verifies the agents' serving certificates (PEM file).
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
	c, err := agent.NewClient(base, agent.ClientOptions{CA: a.CA, Token: strings.TrimSpace(string(token))})
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

func nodeAddress(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
