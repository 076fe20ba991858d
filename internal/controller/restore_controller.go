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
	"sigs.k8s.io/controller-runtime/pkg/handler"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// RuntimeClass is the RuntimeClass whose handler runs stasis-runc.
const RuntimeClass = "stasis"

// RestoreReconciler reconciles Restores.
type RestoreReconciler struct {
	Client  client.Client
	Events  events.EventRecorder
	Requeue time.Duration // how often to look at a pod being restored
	// RetryFor is how long a restore that failed for a cause that may
	// pass (wire.ErrUnavailable: an agent down, a node out of reach) is
	// left to the kubelet's next attempts before the Restore fails.
	RetryFor time.Duration
}

// The pod it creates names this Restore as its grant; the node checks the
// grant with the API server before it restores anything.
// +kubebuilder:rbac:groups=stasis.dev,resources=restores,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=stasis.dev,resources=restores/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=create

// Reconcile moves a Restore from Pending to Succeeded (its pod is Ready)
// or Failed.
func (r *RestoreReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var rs stasisv1.Restore
	if err := r.Client.Get(ctx, req.NamespacedName, &rs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if rs.Status.Phase.Done() {
		return ctrl.Result{}, nil
	}
	if rs.Status.Phase == stasisv1.PhaseRunning {
		return r.watchPod(ctx, &rs)
	}
	ref := rs.Spec.CheckpointRef
	if ref.Namespace == "" {
		ref.Namespace = rs.Namespace
	}
	var ck stasisv1.Checkpoint
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &ck); err != nil {
		if apierrors.IsNotFound(err) {
			return r.fail(ctx, &rs, "CheckpointNotFound", "checkpoint %s/%s does not exist", ref.Namespace, ref.Name)
		}
		return ctrl.Result{}, err
	}
	switch ck.Status.Phase {
	case stasisv1.PhaseSucceeded:
	case stasisv1.PhaseFailed:
		return r.fail(ctx, &rs, "CheckpointFailed", "checkpoint %s/%s failed: %s", ref.Namespace, ref.Name, ck.Status.Message)
	default:
		if rs.Status.Phase == "" {
			rs.Status.Phase, rs.Status.Message = stasisv1.PhasePending, "waiting for checkpoint "+ref.Name
			if err := r.Client.Status().Update(ctx, &rs); err != nil {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{RequeueAfter: r.Requeue}, nil
	}
	pod, err := restorePod(&rs, &ck)
	if err != nil {
		return r.fail(ctx, &rs, "InvalidCheckpoint", "%v", err)
	}
	if err := r.Client.Create(ctx, pod); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return r.fail(ctx, &rs, "PodCreateFailed", "create pod %s: %v", pod.Name, err)
		}
		// Not this Restore's: a pod it created has its UID recorded with
		// phase Running, which never reaches this line. A label is no
		// proof (anyone who may create pods here may copy it), so a retry
		// after the status update below failed ends here too.
		return r.fail(ctx, &rs, "PodExists", "pod %s/%s exists already and is not the one this restore created", pod.Namespace, pod.Name)
	}
	now := metav1.Now()
	// The node restores into this pod only once its UID is recorded here.
	rs.Status.Phase, rs.Status.Message, rs.Status.StartTime, rs.Status.PodUID = stasisv1.PhaseRunning, "", &now, pod.UID
	if err := r.Client.Status().Update(ctx, &rs); err != nil {
		return ctrl.Result{}, err
	}
	r.Events.Eventf(&rs, nil, corev1.EventTypeNormal, "Restoring", "Restore",
		"creating pod %s from checkpoint %s/%s", pod.Name, ref.Namespace, ref.Name)
	return ctrl.Result{RequeueAfter: r.Requeue}, nil
}

// watchPod follows the restored pod until it is Ready or its restore failed.
func (r *RestoreReconciler) watchPod(ctx context.Context, rs *stasisv1.Restore) (ctrl.Result, error) {
	var pod corev1.Pod
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: rs.Namespace, Name: rs.Spec.PodName}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return r.fail(ctx, rs, "PodDeleted", "pod %s was deleted before it was Ready", rs.Spec.PodName)
		}
		return ctrl.Result{}, err
	}
	for _, cs := range pod.Status.ContainerStatuses {
		// stasis-runc's error is the runtime's StartError message.
		why := ""
		if t := cs.LastTerminationState.Terminated; t != nil && t.Reason == "StartError" {
			why = t.Message
		}
		if w := cs.State.Waiting; w != nil && (w.Reason == "RunContainerError" || w.Reason == "CreateContainerError") {
			why = w.Message
		}
		if why == "" {
			continue
		}
		if strings.Contains(why, wire.ErrUnavailable.Error()) && time.Since(rs.Status.StartTime.Time) < r.RetryFor {
			return r.waitRetry(ctx, rs, fmt.Sprintf("container %s: %s", cs.Name, why))
		}
		return r.fail(ctx, rs, "RestoreFailed", "container %s: %s", cs.Name, why)
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			now := metav1.Now()
			rs.Status.Phase, rs.Status.CompletionTime, rs.Status.NodeName = stasisv1.PhaseSucceeded, &now, pod.Spec.NodeName
			if err := r.Client.Status().Update(ctx, rs); err != nil {
				return ctrl.Result{}, err
			}
			r.Events.Eventf(rs, &pod, corev1.EventTypeNormal, "Restored", "Restore",
				"pod %s is Ready on node %s, %s after the restore began", pod.Name, pod.Spec.NodeName,
				now.Sub(rs.Status.StartTime.Time).Round(time.Millisecond))
			return ctrl.Result{}, nil
		}
	}
	return ctrl.Result{RequeueAfter: r.Requeue}, nil
}

// waitRetry records why the restore waits for the kubelet's next attempt.
func (r *RestoreReconciler) waitRetry(ctx context.Context, rs *stasisv1.Restore, why string) (ctrl.Result, error) {
	if msg := "retrying: " + why; rs.Status.Message != msg {
		rs.Status.Message = msg
		if err := r.Client.Status().Update(ctx, rs); err != nil {
			return ctrl.Result{}, err
		}
		r.Events.Eventf(rs, nil, corev1.EventTypeWarning, "Retrying", "Restore", "%s", why)
	}
	return ctrl.Result{RequeueAfter: r.Requeue}, nil
}

func (r *RestoreReconciler) fail(ctx context.Context, rs *stasisv1.Restore, reason, format string, args ...any) (ctrl.Result, error) {
	now := metav1.Now()
	rs.Status.Phase, rs.Status.Reason, rs.Status.Message = stasisv1.PhaseFailed, reason, fmt.Sprintf(format, args...)
	rs.Status.CompletionTime = &now
	if err := r.Client.Status().Update(ctx, rs); err != nil {
		return ctrl.Result{}, err
	}
	r.Events.Eventf(rs, nil, corev1.EventTypeWarning, reason, "Restore", "%s", rs.Status.Message)
	return ctrl.Result{}, nil
}

// restorePod is the pod a Restore creates: the checkpointed pod's template
// under the new name and namespace, run by the RuntimeClass "stasis" with
// the Restore as its grant (AnnotationRestoreFrom), as the Restore's
// service account, and placed on the Restore's node, or else on the
// checkpoint's node when the images are in that node's store.
func restorePod(rs *stasisv1.Restore, ck *stasisv1.Checkpoint) (*corev1.Pod, error) {
	t := ck.Status.PodTemplate
	if t == nil || len(ck.Status.Containers) == 0 {
		return nil, fmt.Errorf("checkpoint %s/%s records no pod or no containers", ck.Namespace, ck.Name)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: rs.Spec.PodName, Namespace: rs.Namespace,
		Labels: map[string]string{}, Annotations: map[string]string{}}, Spec: *t.Spec.DeepCopy()}
	for k, v := range t.Labels {
		pod.Labels[k] = v
	}
	for k, v := range t.Annotations {
		// Templates recorded before stasis.dev/from may name images.
		if !stasisv1.IsRestoreAnnotation(k) {
			pod.Annotations[k] = v
		}
	}
	pod.Labels[stasisv1.LabelRestore] = rs.Name
	pod.Annotations[stasisv1.AnnotationRestoreFrom] = stasisv1.Grant{Kind: stasisv1.GrantRestore, Name: rs.Name}.String()
	rc := RuntimeClass
	pod.Spec.RuntimeClassName = &rc
	// The old pod's hostname must not come along: the new pod has its
	// own. A pod of the same name (a StatefulSet's, migrated) keeps its
	// identity, hostname and subdomain with it.
	if pod.Spec.Hostname != pod.Name {
		pod.Spec.Hostname = ""
	}
	pod.Spec.ServiceAccountName, pod.Spec.DeprecatedServiceAccount = rs.Spec.ServiceAccountName, ""
	pod.Spec.EphemeralContainers = nil
	if rs.Spec.NodeName != "" {
		// A checkpoint in another node's store is fetched from there by
		// this node's agent.
		pinTo(pod, rs.Spec.NodeName)
		return pod, nil
	}
	local := false
	for _, c := range ck.Status.Containers {
		local = local || !strings.Contains(c.Image, "@sha256:")
	}
	if local {
		if ck.Status.NodeName == "" {
			return nil, fmt.Errorf("checkpoint %s/%s is node-local but records no node", ck.Namespace, ck.Name)
		}
		pinTo(pod, ck.Status.NodeName)
	}
	return pod, nil
}

// pinTo makes the scheduler place the pod on node (as the DaemonSet
// controller does), rather than setting spec.nodeName, which would skip
// the scheduler's checks of taints and free resources.
func pinTo(pod *corev1.Pod, node string) {
	term := corev1.NodeSelectorTerm{MatchFields: []corev1.NodeSelectorRequirement{{
		Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}
	if pod.Spec.Affinity == nil {
		pod.Spec.Affinity = &corev1.Affinity{}
	}
	na := pod.Spec.Affinity.NodeAffinity
	if na == nil {
		na = &corev1.NodeAffinity{}
		pod.Spec.Affinity.NodeAffinity = na
	}
	req := na.RequiredDuringSchedulingIgnoredDuringExecution
	if req == nil || len(req.NodeSelectorTerms) == 0 {
		na.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{term}}
		return
	}
	// Terms are ORed: the node requirement joins each of them, in place
	// of a node an earlier pin named (a pod restored from a restored
	// pod's checkpoint carries that one's).
	for i := range req.NodeSelectorTerms {
		var keep []corev1.NodeSelectorRequirement
		for _, f := range req.NodeSelectorTerms[i].MatchFields {
			if f.Key != "metadata.name" {
				keep = append(keep, f)
			}
		}
		req.NodeSelectorTerms[i].MatchFields = append(keep, term.MatchFields...)
	}
}

// SetupWithManager registers the reconciler; a restored pod's changes
// wake its Restore.
func (r *RestoreReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Requeue == 0 {
		r.Requeue = 2 * time.Second
	}
	if r.RetryFor == 0 {
		r.RetryFor = 3 * time.Minute
	}
	podToRestore := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []ctrl.Request {
		if name := o.GetLabels()[stasisv1.LabelRestore]; name != "" {
			return []ctrl.Request{{NamespacedName: client.ObjectKey{Namespace: o.GetNamespace(), Name: name}}}
		}
		return nil
	})
	return ctrl.NewControllerManagedBy(mgr).For(&stasisv1.Restore{}).Named("restore").
		Watches(&corev1.Pod{}, podToRestore).Complete(r)
}
