package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// errNoPods: the agent was started without what pod checkpoints need.
var errNoPods = errors.New("this agent does not checkpoint pods: start it with --cri-runc-root and --kubeconfig or --in-cluster")

// podCheckpoint checkpoints a Kubernetes pod's containers on this node
// (podcheckpoint): what the stasis controller asks of a node.
func (s *Server) podCheckpoint(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
	ns, pod := r.PathValue("namespace"), r.PathValue("pod")
	target := ns + "/" + pod
	if s.cfg.Pods == nil || s.cfg.Kube == nil {
		return target, fmt.Errorf("%w: %v", errBadRequest, errNoPods)
	}
	var req wire.PodCheckpointRequest
	if err := decode(r, &req); err != nil {
		return target, err
	}
	req.Namespace, req.Pod = ns, pod
	if req.Name == "" {
		return target, fmt.Errorf("%w: name is required", errBadRequest)
	}
	if err := s.podContainers(r.Context(), &req); err != nil {
		return target, err
	}
	return target, s.run(w, r, caller, "pod-checkpoint", target, func(ctx context.Context) (any, error) {
		res, err := s.cfg.Pods.Checkpoint(ctx, req)
		if err == nil {
			for _, c := range res.Containers {
				s.metrics.bytes.WithLabelValues("written").Add(float64(c.Size))
			}
		}
		return res, err
	})
}

// podRelease ends or resumes the containers of a pod that a checkpoint
// left frozen (wire.PodCheckpointRequest.KeepFrozen). The pod may already
// be deleted, so the containers are named by ID, and each must be paused
// and belong to that pod by the runtime's own record.
func (s *Server) podRelease(w http.ResponseWriter, r *http.Request, caller *Identity) (string, error) {
	ns, pod := r.PathValue("namespace"), r.PathValue("pod")
	target := ns + "/" + pod
	if s.cfg.Pods == nil {
		return target, fmt.Errorf("%w: %v", errBadRequest, errNoPods)
	}
	var req wire.PodReleaseRequest
	if err := decode(r, &req); err != nil {
		return target, err
	}
	req.Namespace, req.Pod = ns, pod
	if len(req.Containers) == 0 {
		return target, fmt.Errorf("%w: no containers named", errBadRequest)
	}
	if req.Action != wire.ReleaseKill && req.Action != wire.ReleaseResume {
		return target, fmt.Errorf("%w: action %q (want %s or %s)", errBadRequest, req.Action, wire.ReleaseKill, wire.ReleaseResume)
	}
	if err := s.cfg.Pods.Release(r.Context(), req); err != nil {
		return target, err
	}
	w.WriteHeader(http.StatusNoContent)
	return target, nil
}

// podContainers sets req.Containers to the runtime IDs the API server
// reports for the containers req names (all of the pod's when it names
// none). The caller names containers but does not say what they are:
// runc would dump any container of the node by ID, another pod's or one
// that is no pod's, so an ID in the request must be the one the API server
// reports. The pod's opt-outs hold here too, whoever asks.
func (s *Server) podContainers(ctx context.Context, req *wire.PodCheckpointRequest) error {
	name := req.Namespace + "/" + req.Pod
	pod, err := s.cfg.Kube.CoreV1().Pods(req.Namespace).Get(ctx, req.Pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: pod %s does not exist", errNotFound, name)
	}
	if err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	if pod.Spec.NodeName != s.cfg.NodeName {
		return fmt.Errorf("%w: pod %s runs on node %q, not on this agent's node %q", errBadRequest, name, pod.Spec.NodeName, s.cfg.NodeName)
	}
	if err := policy.MayCheckpoint("pod "+name, pod.Annotations, req.Repository != ""); err != nil {
		return err
	}
	asked := req.Containers
	if len(asked) == 0 {
		for _, c := range pod.Spec.Containers {
			asked = append(asked, wire.PodContainer{Name: c.Name})
		}
	}
	declared := map[string]bool{}
	for _, c := range pod.Spec.Containers {
		declared[c.Name] = true
	}
	// "containerd://<id>", "cri-o://<id>"
	running := map[string]string{}
	for _, st := range pod.Status.ContainerStatuses {
		if _, id, ok := strings.Cut(st.ContainerID, "://"); ok && id != "" && st.State.Running != nil {
			running[st.Name] = id
		}
	}
	var cs []wire.PodContainer
	seen := map[string]bool{}
	for _, c := range asked {
		switch {
		case !declared[c.Name]:
			return fmt.Errorf("%w: pod %s has no container %q", errBadRequest, name, c.Name)
		case seen[c.Name]:
			return fmt.Errorf("%w: container %q is named twice", errBadRequest, c.Name)
		case running[c.Name] == "":
			return fmt.Errorf("%w: container %q of pod %s is not running", errBadRequest, c.Name, name)
		case c.ID != "" && c.ID != running[c.Name]:
			return fmt.Errorf("%w: container %q of pod %s is %s, not %s", errBadRequest, c.Name, name, running[c.Name], c.ID)
		}
		seen[c.Name] = true
		cs = append(cs, wire.PodContainer{Name: c.Name, ID: running[c.Name]})
	}
	req.Containers = cs
	return nil
}
