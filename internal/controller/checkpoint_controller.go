// Package controller holds the reconcilers of the stasis.dev API: a
// Checkpoint asks the stasis agent on the pod's node to checkpoint it; a
// Restore creates a pod that the RuntimeClass "stasis" restores from the
// checkpoint (pkg/runtimeclass). Both are idempotent: a controller restarted in
// the middle of an operation picks it up from the status it recorded.
package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// Agents reach the stasis agent of a node.
type Agents interface {
	CheckpointPod(ctx context.Context, node *corev1.Node, req wire.PodCheckpointRequest) (*wire.PodCheckpointResult, error)
	// ReleasePod ends or resumes the containers a KeepFrozen checkpoint
	// left frozen.
	ReleasePod(ctx context.Context, node *corev1.Node, req wire.PodReleaseRequest) error
}

// CheckpointReconciler reconciles Checkpoints.
type CheckpointReconciler struct {
	Client  client.Client
	Events  events.EventRecorder
	Agents  Agents
	Requeue time.Duration // how soon to look again at a pod not yet running
}

// The agents admit a caller that may create checkpoints (stasis-admin),
// with a token for that node's agent, of the controller's own
// ServiceAccount (and no other).
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create,resourceNames=stasis-controller,namespace=stasis-system
// +kubebuilder:rbac:groups=stasis.dev,resources=checkpoints,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=stasis.dev,resources=checkpoints/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile moves a Checkpoint from Pending to Succeeded or Failed.
func (r *CheckpointReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ck stasisv1.Checkpoint
	if err := r.Client.Get(ctx, req.NamespacedName, &ck); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if ck.Status.Phase.Done() {
		return ctrl.Result{}, nil
	}
	var pod corev1.Pod
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: ck.Namespace, Name: ck.Spec.PodName}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return r.fail(ctx, &ck, "PodNotFound", "pod %s/%s does not exist", ck.Namespace, ck.Spec.PodName)
		}
		return ctrl.Result{}, err
	}
	if err := policy.MayCheckpoint("pod "+ck.Namespace+"/"+pod.Name, pod.Annotations, ck.Spec.Destination.Image != nil); err != nil {
		return r.fail(ctx, &ck, "OptedOut", "%v", err)
	}
	containers, waiting, err := podContainers(&pod, ck.Spec.Containers)
	if err != nil {
		return r.fail(ctx, &ck, "ContainerNotFound", "%v", err)
	}
	if waiting != "" {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return r.fail(ctx, &ck, "PodNotRunning", "pod %s has ended (%s)", pod.Name, pod.Status.Phase)
		}
		if ck.Status.Phase == "" {
			ck.Status.Phase, ck.Status.Message = stasisv1.PhasePending, waiting
			if err := r.Client.Status().Update(ctx, &ck); err != nil {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{RequeueAfter: r.Requeue}, nil
	}
	if ck.Status.Phase != stasisv1.PhaseRunning || ck.Status.PodTemplate == nil {
		now := metav1.Now()
		ck.Status.Phase, ck.Status.Message = stasisv1.PhaseRunning, ""
		if ck.Status.StartTime == nil {
			ck.Status.StartTime = &now
		}
		ck.Status.NodeName = pod.Spec.NodeName
		ck.Status.PodTemplate = podTemplate(&pod)
		if err := r.Client.Status().Update(ctx, &ck); err != nil {
			return ctrl.Result{}, err
		}
		r.Events.Eventf(&ck, &pod, corev1.EventTypeNormal, "Checkpointing", "Checkpoint",
			"checkpointing %d container(s) of pod %s on node %s", len(containers), pod.Name, pod.Spec.NodeName)
	}
	var node corev1.Node
	if err := r.Client.Get(ctx, client.ObjectKey{Name: pod.Spec.NodeName}, &node); err != nil {
		return ctrl.Result{}, err
	}
	areq := wire.PodCheckpointRequest{Namespace: ck.Namespace, Pod: pod.Name, Name: ck.Name, UID: string(ck.UID),
		Containers: containers, KeepFrozen: ck.Spec.KeepFrozen}
	if d := ck.Spec.Destination.Image; d != nil {
		areq.Repository, areq.Insecure = d.Repository, d.Insecure
	}
	// The agent finds a checkpoint it already took for this Checkpoint
	// (by name and UID): asking again after a restart is safe.
	res, err := r.Agents.CheckpointPod(ctx, &node, areq)
	if err != nil {
		return r.fail(ctx, &ck, "CheckpointFailed", "%v", err)
	}
	now := metav1.Now()
	ck.Status.Phase, ck.Status.CompletionTime, ck.Status.Containers = stasisv1.PhaseSucceeded, &now, nil
	for _, c := range res.Containers {
		ck.Status.Containers = append(ck.Status.Containers, stasisv1.ContainerCheckpoint{
			Name: c.Name, Image: c.Image, Digest: c.Digest, Size: c.Size, DurationMillis: c.DurationMillis})
	}
	if err := r.Client.Status().Update(ctx, &ck); err != nil {
		return ctrl.Result{}, err
	}
	r.Events.Eventf(&ck, &pod, corev1.EventTypeNormal, "Checkpointed", "Checkpoint",
		"checkpointed pod %s in %s", pod.Name, now.Sub(ck.Status.StartTime.Time).Round(time.Millisecond))
	return ctrl.Result{}, nil
}

func (r *CheckpointReconciler) fail(ctx context.Context, ck *stasisv1.Checkpoint, reason, format string, args ...any) (ctrl.Result, error) {
	now := metav1.Now()
	ck.Status.Phase, ck.Status.Reason, ck.Status.Message = stasisv1.PhaseFailed, reason, fmt.Sprintf(format, args...)
	ck.Status.CompletionTime = &now
	if err := r.Client.Status().Update(ctx, ck); err != nil {
		return ctrl.Result{}, err
	}
	r.Events.Eventf(ck, nil, corev1.EventTypeWarning, reason, "Checkpoint", "%s", ck.Status.Message)
	return ctrl.Result{}, nil
}

// podContainers picks the containers to checkpoint, by name (the agent
// takes their IDs from the API server, not from its caller); waiting is
// why not yet (a container not running), "" when all are.
func podContainers(pod *corev1.Pod, names []string) (cs []wire.PodContainer, waiting string, err error) {
	if len(names) == 0 {
		for _, c := range pod.Spec.Containers {
			names = append(names, c.Name)
		}
	}
	status := map[string]corev1.ContainerStatus{}
	for _, s := range pod.Status.ContainerStatuses {
		status[s.Name] = s
	}
	for _, n := range names {
		found := false
		for _, c := range pod.Spec.Containers {
			found = found || c.Name == n
		}
		if !found {
			return nil, "", fmt.Errorf("pod %s has no container %q", pod.Name, n)
		}
		s, ok := status[n]
		if !ok || s.State.Running == nil || s.ContainerID == "" {
			waiting = fmt.Sprintf("waiting for container %s to run", n)
			continue
		}
		cs = append(cs, wire.PodContainer{Name: n})
	}
	return cs, waiting, nil
}

// podTemplate is the pod as declared, to create again: without what
// belongs to the instance (node, status, owner, the token volume the
// API server injects, ephemeral containers, the ReplicaSet's hash label)
// and without the restore annotations that made this pod (a Restore sets
// its own).
func podTemplate(pod *corev1.Pod) *corev1.PodTemplateSpec {
	t := &corev1.PodTemplateSpec{}
	t.Labels = map[string]string{}
	for k, v := range pod.Labels {
		if k != "pod-template-hash" && k != stasisv1.LabelRestore {
			t.Labels[k] = v
		}
	}
	t.Annotations = map[string]string{}
	for k, v := range pod.Annotations {
		if !strings.HasPrefix(k, "kubectl.kubernetes.io/") && !stasisv1.IsRestoreAnnotation(k) {
			t.Annotations[k] = v
		}
	}
	t.Spec = *pod.Spec.DeepCopy()
	t.Spec.NodeName = ""
	t.Spec.EphemeralContainers = nil
	injected := map[string]bool{}
	var vols []corev1.Volume
	for _, v := range t.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			injected[v.Name] = true
			continue
		}
		vols = append(vols, v)
	}
	t.Spec.Volumes = vols
	for _, cs := range [][]corev1.Container{t.Spec.InitContainers, t.Spec.Containers} {
		for i := range cs {
			var ms []corev1.VolumeMount
			for _, m := range cs[i].VolumeMounts {
				if !injected[m.Name] {
					ms = append(ms, m)
				}
			}
			cs[i].VolumeMounts = ms
		}
	}
	return t
}

// SetupWithManager registers the reconciler.
func (r *CheckpointReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Requeue == 0 {
		r.Requeue = time.Second
	}
	return ctrl.NewControllerManagedBy(mgr).For(&stasisv1.Checkpoint{}).Named("checkpoint").Complete(r)
}
