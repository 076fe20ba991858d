package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/stasis-dev/stasis/pkg/podcheckpoint"
)

// errNoKubelet: the agent was started without a kubelet to checkpoint
// pods through.
var errNoKubelet = errors.New("this agent has no kubelet: start it with --kubelet-url")

// podCheckpoint checkpoints a Kubernetes pod's containers on this node
// (podcheckpoint): what the stasis controller asks of a node.
func (s *Server) podCheckpoint(w http.ResponseWriter, r *http.Request, _ *Identity) (string, error) {
	ns, pod := r.PathValue("namespace"), r.PathValue("pod")
	target := ns + "/" + pod
	if s.cfg.Pods == nil {
		return target, fmt.Errorf("%w: %v", errBadRequest, errNoKubelet)
	}
	var req podcheckpoint.Request
	if err := decode(r, &req); err != nil {
		return target, err
	}
	req.Namespace, req.Pod = ns, pod
	if req.Name == "" || len(req.Containers) == 0 {
		return target, fmt.Errorf("%w: name and containers are required", errBadRequest)
	}
	return target, s.run(w, r, "pod-checkpoint", target, func(ctx context.Context) (any, error) {
		res, err := s.cfg.Pods.Checkpoint(ctx, req)
		if err == nil {
			for _, c := range res.Containers {
				s.metrics.bytes.WithLabelValues("written").Add(float64(c.Size))
			}
		}
		return res, err
	})
}
