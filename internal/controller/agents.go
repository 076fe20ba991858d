package controller

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	corev1 "k8s.io/api/core/v1"

	"github.com/stasis-dev/stasis/pkg/wire"
)

// AgentClients reach the agents of the nodes (wire.Nodes: the agent's
// certificate must be its node's before the controller's token is sent).
type AgentClients struct {
	wire.Nodes
}

// CheckpointPod implements Agents.
func (a *AgentClients) CheckpointPod(ctx context.Context, node *corev1.Node, req wire.PodCheckpointRequest) (*wire.PodCheckpointResult, error) {
	c, err := a.Client(ctx, node)
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

// ReleasePod implements Agents.
func (a *AgentClients) ReleasePod(ctx context.Context, node *corev1.Node, req wire.PodReleaseRequest) error {
	c, err := a.Client(ctx, node)
	if err != nil {
		return err
	}
	path := fmt.Sprintf("/v1/pods/%s/%s/release", url.PathEscape(req.Namespace), url.PathEscape(req.Pod))
	if err := c.Do(ctx, http.MethodPost, path, req, nil); err != nil {
		return fmt.Errorf("stasis agent on node %s: %w", node.Name, err)
	}
	return nil
}
