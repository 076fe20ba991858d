package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/pkg/policy"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// MigrationReconciler reconciles Migrations. A Migration is made of the
// two objects that already do each half, so that each half is checked as
// it is on its own: a Checkpoint of the pod that leaves it frozen
// (KeepFrozen), then a Restore of that checkpoint under the pod's own name
// on the target node, whose agent fetches the checkpoint from the source
// node's. In between, the source pod is deleted and its frozen containers
// ended; a Restore that fails is followed by one on the source node, so
// that the pod runs somewhere.
type MigrationReconciler struct {
	Client client.Client
	// Reader reads past the cache: an object just created is not in it
	// yet, which must not read as deleted.
	Reader client.Reader
	Events events.EventRecorder
	Agents Agents
	// Metrics, when set, records each Migration that ends.
	Metrics *MigrationMetrics
	Requeue time.Duration
}

// +kubebuilder:rbac:groups=stasis.dev,resources=migrations,verbs=get;list;watch
// +kubebuilder:rbac:groups=stasis.dev,resources=migrations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stasis.dev,resources=checkpoints;restores,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;delete;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims;persistentvolumes,verbs=get

// Reconcile moves a Migration through its phases; each step is idempotent
// and recorded before the next, so a restarted controller resumes it.
func (r *MigrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var m stasisv1.Migration
	if err := r.Client.Get(ctx, req.NamespacedName, &m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	switch m.Status.Phase {
	case stasisv1.MigrationSucceeded, stasisv1.MigrationFailed:
		return ctrl.Result{}, nil
	case "", stasisv1.MigrationPending:
		return r.start(ctx, &m)
	case stasisv1.MigrationCheckpointing:
		return r.checkpointing(ctx, &m)
	case stasisv1.MigrationRestoring:
		return r.restoring(ctx, &m)
	case stasisv1.MigrationRollingBack:
		return r.rollingBack(ctx, &m)
	}
	return ctrl.Result{}, nil
}

// start checks the pod and the target and checkpoints the pod.
func (r *MigrationReconciler) start(ctx context.Context, m *stasisv1.Migration) (ctrl.Result, error) {
	var pod corev1.Pod
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.PodName}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return r.fail(ctx, m, "PodNotFound", "pod %s/%s does not exist", m.Namespace, m.Spec.PodName)
		}
		return ctrl.Result{}, err
	}
	if err := policy.MayCheckpoint("pod "+m.Namespace+"/"+pod.Name, pod.Annotations, true); err != nil {
		return r.fail(ctx, m, "OptedOut", "%v", err)
	}
	if pod.Spec.NodeName == "" || pod.Status.Phase != corev1.PodRunning {
		return r.fail(ctx, m, "PodNotRunning", "pod %s is %s, not running on a node", pod.Name, pod.Status.Phase)
	}
	targetPod := pod.Name
	if o := metav1.GetControllerOf(&pod); o != nil {
		switch {
		case o.Kind == "ReplicaSet" && pod.GenerateName != "":
			targetPod = pod.GenerateName + utilrand.String(5)
		case o.Kind == "StatefulSet":
			// Same name, same identity: the name is held for the copy
			// (config/admission/migration_hold.yaml) and the StatefulSet
			// adopts it.
		default:
			return r.fail(ctx, m, "Unsupported", "pod %s is owned by %s %s: pods without an owner, a ReplicaSet's (a Deployment's) and a StatefulSet's migrate, others not yet",
				pod.Name, o.Kind, o.Name)
		}
	}
	target, err := r.target(ctx, m, pod.Spec.NodeName)
	if err != nil {
		return r.fail(ctx, m, "NoTargetNode", "%v", err)
	}
	if err := r.volumesReach(ctx, &pod, target); err != nil {
		return r.fail(ctx, m, "VolumeNotReachable", "%v", err)
	}
	ids, err := runningContainers(&pod)
	if err != nil {
		return r.fail(ctx, m, "PodNotRunning", "%v", err)
	}
	now, freeze := metav1.Now(), metav1.NowMicro()
	m.Status = stasisv1.MigrationStatus{Phase: stasisv1.MigrationCheckpointing, SourceNode: pod.Spec.NodeName,
		TargetNode: target, PodUID: string(pod.UID), TargetPod: targetPod, Checkpoint: m.Name, SourceContainers: ids,
		StartTime: &now, FreezeTime: &freeze}
	if err := r.Client.Status().Update(ctx, m); err != nil {
		return ctrl.Result{}, err
	}
	ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace},
		Spec: stasisv1.CheckpointSpec{PodName: pod.Name, KeepFrozen: true}}
	if err := r.createOwned(ctx, m, ck); err != nil {
		return r.fail(ctx, m, "CheckpointFailed", "%v", err)
	}
	r.Events.Eventf(m, &pod, corev1.EventTypeNormal, "Migrating", "Migrate",
		"moving pod %s from node %s to node %s (%s)", pod.Name, m.Status.SourceNode, target, mode(m))
	return ctrl.Result{}, nil
}

// runningContainers are the pod's containers as its runtime knows them:
// what the source node's agent is asked to kill or resume.
func runningContainers(pod *corev1.Pod) ([]stasisv1.SourceContainer, error) {
	var ids []stasisv1.SourceContainer
	for _, cs := range pod.Status.ContainerStatuses {
		_, id, _ := strings.Cut(cs.ContainerID, "://")
		if cs.State.Running == nil || id == "" {
			return nil, fmt.Errorf("container %s of pod %s is not running", cs.Name, pod.Name)
		}
		ids = append(ids, stasisv1.SourceContainer{Name: cs.Name, ID: id})
	}
	return ids, nil
}

func mode(m *stasisv1.Migration) stasisv1.MigrationMode {
	if m.Spec.Mode == "" {
		return stasisv1.MigrationOffline
	}
	return m.Spec.Mode
}

// target is the node the pod goes to: the spec's, which must be Ready
// and not the source, or else the first such node by name that accepts
// pods.
func (r *MigrationReconciler) target(ctx context.Context, m *stasisv1.Migration, source string) (string, error) {
	if n := m.Spec.TargetNode; n != "" {
		if n == source {
			return "", fmt.Errorf("pod %s already runs on node %s", m.Spec.PodName, n)
		}
		var node corev1.Node
		if err := r.Client.Get(ctx, client.ObjectKey{Name: n}, &node); err != nil {
			return "", fmt.Errorf("target node %s: %w", n, err)
		}
		if !nodeReady(&node) {
			return "", fmt.Errorf("target node %s is not Ready", n)
		}
		return n, nil
	}
	var nodes corev1.NodeList
	if err := r.Client.List(ctx, &nodes); err != nil {
		return "", err
	}
	sort.Slice(nodes.Items, func(i, j int) bool { return nodes.Items[i].Name < nodes.Items[j].Name })
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if n.Name != source && !n.Spec.Unschedulable && nodeReady(n) {
			return n.Name, nil
		}
	}
	return "", fmt.Errorf("no Ready node other than %s accepts pods", source)
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// checkpointing waits for the Checkpoint; once it succeeded the source
// pod is frozen, and is deleted before its copy is made.
func (r *MigrationReconciler) checkpointing(ctx context.Context, m *stasisv1.Migration) (ctrl.Result, error) {
	var ck stasisv1.Checkpoint
	if err := r.Reader.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Status.Checkpoint}, &ck); err != nil {
		if apierrors.IsNotFound(err) {
			if err := r.release(ctx, m, wire.ReleaseResume); err != nil {
				return ctrl.Result{}, err
			}
			return r.fail(ctx, m, "CheckpointFailed", "checkpoint %s was deleted", m.Status.Checkpoint)
		}
		return ctrl.Result{}, err
	}
	switch ck.Status.Phase {
	case stasisv1.PhaseFailed:
		// A failed dump thaws the pod itself; a dump that succeeded
		// after its caller gave up left it frozen, and is resumed here.
		if err := r.release(ctx, m, wire.ReleaseResume); err != nil {
			return ctrl.Result{}, fmt.Errorf("resume pod %s after its checkpoint failed: %w", m.Spec.PodName, err)
		}
		return r.fail(ctx, m, "CheckpointFailed", "%s; pod %s keeps running on node %s", ck.Status.Message, m.Spec.PodName, m.Status.SourceNode)
	case stasisv1.PhaseSucceeded:
	default:
		return ctrl.Result{RequeueAfter: r.Requeue}, nil
	}
	for _, c := range ck.Status.Containers {
		m.Status.BytesMoved += c.Size
	}
	// A container that restarted between start and the dump was
	// checkpointed, and is frozen, under its new ID.
	var pod corev1.Pod
	if err := r.Reader.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.PodName}, &pod); err == nil && string(pod.UID) == m.Status.PodUID {
		if ids, err := runningContainers(&pod); err == nil {
			m.Status.SourceContainers = ids
		}
	}
	m.Status.Phase, m.Status.Restore = stasisv1.MigrationRestoring, m.Name
	if err := r.Client.Status().Update(ctx, m); err != nil {
		return ctrl.Result{}, err
	}
	return r.restoring(ctx, m)
}

// restoring has a Restore create the pod's copy on the target node. A pod
// that keeps its name is ended first (deleted, then its frozen containers
// killed by its node's agent: killed first, the kubelet would restart
// them), and a failed restore is rolled back onto the source node. A
// ReplicaSet's pod stays frozen beside its copy, which joins the
// ReplicaSet once Ready, before the source is ended; a failed restore
// then only resumes the source.
func (r *MigrationReconciler) restoring(ctx context.Context, m *stasisv1.Migration) (ctrl.Result, error) {
	sameName := m.Status.TargetPod == m.Spec.PodName
	if sameName && !m.Status.SourceEnded {
		res, err := r.endSourceOnce(ctx, m)
		if errors.Is(err, errNameTaken) {
			return r.fail(ctx, m, "NameTaken", "%v; the source is ended, its checkpoint %s kept", err, m.Status.Checkpoint)
		}
		if err != nil || !res.IsZero() {
			return res, err
		}
	}
	failed := r.rollBack
	if !sameName {
		failed = r.abandon
	}
	rs, err := r.ensureRestore(ctx, m, m.Status.Restore, m.Status.TargetNode, m.Status.TargetPod)
	if err != nil {
		return failed(ctx, m, err.Error())
	}
	switch rs.Status.Phase {
	case stasisv1.PhaseSucceeded:
	case stasisv1.PhaseFailed:
		return failed(ctx, m, rs.Status.Message)
	default:
		return ctrl.Result{RequeueAfter: r.Requeue}, nil
	}
	if !m.Status.SourceEnded {
		if err := r.adopt(ctx, m); errors.Is(err, errSourceGone) {
			return r.sourceGone(ctx, m, err)
		} else if err != nil {
			return ctrl.Result{}, err
		}
		if res, err := r.endSourceOnce(ctx, m); err != nil || !res.IsZero() {
			return res, err
		}
	}
	now := metav1.Now()
	m.Status.Phase, m.Status.CompletionTime = stasisv1.MigrationSucceeded, &now
	if m.Status.FreezeTime != nil {
		m.Status.DowntimeMillis = time.Since(m.Status.FreezeTime.Time).Milliseconds()
	}
	if err := r.Client.Status().Update(ctx, m); err != nil {
		return ctrl.Result{}, err
	}
	r.Metrics.observe(m)
	r.Events.Eventf(m, nil, corev1.EventTypeNormal, "Migrated", "Migrate",
		"pod %s moved from node %s to node %s: down %dms, %d bytes moved, %s in all", m.Spec.PodName, m.Status.SourceNode,
		m.Status.TargetNode, m.Status.DowntimeMillis, m.Status.BytesMoved, now.Sub(m.Status.StartTime.Time).Round(time.Millisecond))
	return ctrl.Result{}, nil
}

// endSourceOnce ends the source pod and records that it did; a zero
// result means it is done.
func (r *MigrationReconciler) endSourceOnce(ctx context.Context, m *stasisv1.Migration) (ctrl.Result, error) {
	gone, err := r.endSource(ctx, m)
	if err != nil || !gone {
		return ctrl.Result{RequeueAfter: r.Requeue}, err
	}
	m.Status.SourceEnded = true
	return ctrl.Result{}, r.Client.Status().Update(ctx, m)
}

// adopt makes the Ready copy of a ReplicaSet's pod the ReplicaSet's: its
// pod-template-hash label (without which the ReplicaSet's selector does
// not match it) and the source's controller reference. The source is
// given the lowest deletion cost first, so that a ReplicaSet that sees one
// pod too many before the source is gone removes the source.
func (r *MigrationReconciler) adopt(ctx context.Context, m *stasisv1.Migration) error {
	var src, dst corev1.Pod
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.PodName}, &src)
	if apierrors.IsNotFound(err) || (err == nil && string(src.UID) != m.Status.PodUID) {
		return fmt.Errorf("%w: pod %s was deleted while it was being migrated", errSourceGone, m.Spec.PodName)
	}
	if err != nil {
		return fmt.Errorf("source pod %s: %w", m.Spec.PodName, err)
	}
	owner := metav1.GetControllerOf(&src)
	if owner == nil {
		return fmt.Errorf("pod %s has no owner any more", src.Name)
	}
	before := src.DeepCopy()
	if src.Annotations == nil {
		src.Annotations = map[string]string{}
	}
	src.Annotations[podDeletionCost] = "-2147483648"
	if err := r.Client.Patch(ctx, &src, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("source pod %s: %w", src.Name, err)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Status.TargetPod}, &dst); err != nil {
		return fmt.Errorf("pod %s: %w", m.Status.TargetPod, err)
	}
	if metav1.IsControlledBy(&dst, &metav1.ObjectMeta{UID: owner.UID}) {
		return nil
	}
	before = dst.DeepCopy()
	if h, ok := src.Labels["pod-template-hash"]; ok {
		dst.Labels["pod-template-hash"] = h
	}
	dst.OwnerReferences = append(dst.OwnerReferences, *owner)
	if err := r.Client.Patch(ctx, &dst, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("pod %s joins %s %s: %w", dst.Name, owner.Kind, owner.Name, err)
	}
	return nil
}

var errSourceGone = errors.New("the source is gone")

// podDeletionCost is the annotation a ReplicaSet orders its pods by when
// it removes one of them.
const podDeletionCost = "controller.kubernetes.io/pod-deletion-cost"

// abandon ends a ReplicaSet pod's migration whose restore failed: the copy
// is deleted and the source, never deleted, resumed where it was.
func (r *MigrationReconciler) abandon(ctx context.Context, m *stasisv1.Migration, why string) (ctrl.Result, error) {
	if _, err := r.deleteCopy(ctx, m, m.Status.TargetPod); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.release(ctx, m, wire.ReleaseResume); err != nil {
		return ctrl.Result{}, fmt.Errorf("resume pod %s: %w", m.Spec.PodName, err)
	}
	return r.fail(ctx, m, "RestoreFailed", "restore on node %s failed: %s; pod %s keeps running on node %s",
		m.Status.TargetNode, why, m.Spec.PodName, m.Status.SourceNode)
}

// deleteCopy deletes pod name if the migration's Restore made it (a
// failed copy); gone says no such pod is left.
func (r *MigrationReconciler) deleteCopy(ctx context.Context, m *stasisv1.Migration, name string) (gone bool, err error) {
	var pod corev1.Pod
	err = r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: name}, &pod)
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, err
	case pod.Labels[stasisv1.LabelRestore] != m.Status.Restore:
		return true, nil // not the copy: someone else's pod of that name
	}
	zero := int64(0)
	return false, client.IgnoreNotFound(r.Client.Delete(ctx, &pod, &client.DeleteOptions{GracePeriodSeconds: &zero}))
}

// sourceGone ends a ReplicaSet pod's migration whose source was deleted
// by someone else (a scale-down, kubectl delete) while it was frozen: its
// copy goes the same way rather than into the ReplicaSet, and its frozen
// containers, which no kubelet can stop, are killed.
func (r *MigrationReconciler) sourceGone(ctx context.Context, m *stasisv1.Migration, why error) (ctrl.Result, error) {
	if _, err := r.deleteCopy(ctx, m, m.Status.TargetPod); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.release(ctx, m, wire.ReleaseKill); err != nil {
		return ctrl.Result{}, err
	}
	return r.fail(ctx, m, "SourceDeleted", "%v; its copy %s is deleted too", why, m.Status.TargetPod)
}

// endSource deletes the source pod (the one this Migration recorded, no
// other of its name) at once and has its node's agent kill its frozen
// containers; gone says the pod's name is free.
func (r *MigrationReconciler) endSource(ctx context.Context, m *stasisv1.Migration) (gone bool, err error) {
	var pod corev1.Pod
	err = r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.PodName}, &pod)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, err
	case string(pod.UID) == m.Status.PodUID:
		zero := int64(0)
		if err := r.Client.Delete(ctx, &pod, &client.DeleteOptions{GracePeriodSeconds: &zero,
			Preconditions: &metav1.Preconditions{UID: &pod.UID}}); client.IgnoreNotFound(err) != nil {
			return false, fmt.Errorf("delete pod %s: %w", pod.Name, err)
		}
	}
	// The source's frozen containers are killed whoever holds the name
	// now: its pod object is gone, and no kubelet can stop them.
	if err := r.release(ctx, m, wire.ReleaseKill); err != nil {
		return false, err
	}
	err = r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.PodName}, &pod)
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err == nil && string(pod.UID) != m.Status.PodUID:
		return false, fmt.Errorf("%w: pod %s (UID %s) was created under its name while it was being migrated "+
			"(config/admission/migration_hold.yaml holds the name for the copy: is it installed?)", errNameTaken, pod.Name, pod.UID)
	}
	return false, err
}

// errNameTaken is a pod of the migrated pod's name that is not the source:
// its copy cannot be made, and that pod is no one's to delete.
var errNameTaken = errors.New("its name is taken")

// release asks the source node's agent to kill or resume the containers
// the checkpoint left frozen.
func (r *MigrationReconciler) release(ctx context.Context, m *stasisv1.Migration, action string) error {
	var node corev1.Node
	if err := r.Client.Get(ctx, client.ObjectKey{Name: m.Status.SourceNode}, &node); err != nil {
		return err
	}
	req := wire.PodReleaseRequest{Namespace: m.Namespace, Pod: m.Spec.PodName, Action: action}
	for _, c := range m.Status.SourceContainers {
		req.Containers = append(req.Containers, wire.PodContainer{Name: c.Name, ID: c.ID})
	}
	return r.Agents.ReleasePod(ctx, &node, req)
}

// ensureRestore is the Restore name of the migrated pod onto node as pod,
// created if need be.
func (r *MigrationReconciler) ensureRestore(ctx context.Context, m *stasisv1.Migration, name, node, pod string) (*stasisv1.Restore, error) {
	var rs stasisv1.Restore
	err := r.Reader.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: name}, &rs)
	if err == nil {
		if !metav1.IsControlledBy(&rs, m) {
			return nil, fmt.Errorf("restore %s exists and is not this migration's", name)
		}
		return &rs, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	var ck stasisv1.Checkpoint
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Status.Checkpoint}, &ck); err != nil {
		return nil, err
	}
	sa := ""
	if t := ck.Status.PodTemplate; t != nil {
		// The same namespace: the pod keeps its own service account.
		sa = t.Spec.ServiceAccountName
	}
	rs = stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: m.Namespace},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: ck.Name}, PodName: pod,
			NodeName: node, ServiceAccountName: sa, LazyPages: m.Spec.LazyPages}}
	if err := r.createOwned(ctx, m, &rs); err != nil {
		return nil, err
	}
	return &rs, nil
}

// rollBack restores the checkpoint on the source node, after the restore
// on the target failed (its pod deleted first: it holds the name).
func (r *MigrationReconciler) rollBack(ctx context.Context, m *stasisv1.Migration, why string) (ctrl.Result, error) {
	m.Status.Phase, m.Status.Reason, m.Status.Message = stasisv1.MigrationRollingBack, "RestoreFailed",
		fmt.Sprintf("restore on node %s failed: %s", m.Status.TargetNode, why)
	if err := r.Client.Status().Update(ctx, m); err != nil {
		return ctrl.Result{}, err
	}
	r.Events.Eventf(m, nil, corev1.EventTypeWarning, "RestoreFailed", "Migrate", "%s; restoring pod %s on node %s again",
		m.Status.Message, m.Spec.PodName, m.Status.SourceNode)
	return r.rollingBack(ctx, m)
}

func (r *MigrationReconciler) rollingBack(ctx context.Context, m *stasisv1.Migration) (ctrl.Result, error) {
	back := m.Name + "-rollback"
	if m.Status.Restore != back {
		if gone, err := r.deleteCopy(ctx, m, m.Spec.PodName); err != nil || !gone {
			return ctrl.Result{RequeueAfter: r.Requeue}, err
		}
		m.Status.Restore = back
		if err := r.Client.Status().Update(ctx, m); err != nil {
			return ctrl.Result{}, err
		}
	}
	rs, err := r.ensureRestore(ctx, m, back, m.Status.SourceNode, m.Spec.PodName)
	if err != nil {
		return r.fail(ctx, m, "RollbackFailed", "%s; restoring it on node %s failed too: %v (checkpoint %s is kept)",
			m.Status.Message, m.Status.SourceNode, err, m.Status.Checkpoint)
	}
	switch rs.Status.Phase {
	case stasisv1.PhaseSucceeded:
		return r.fail(ctx, m, "RestoreFailed", "%s; pod %s runs again on node %s from its checkpoint", m.Status.Message,
			m.Spec.PodName, m.Status.SourceNode)
	case stasisv1.PhaseFailed:
		return r.fail(ctx, m, "RollbackFailed", "%s; restoring it on node %s failed too: %s (checkpoint %s is kept)",
			m.Status.Message, m.Status.SourceNode, rs.Status.Message, m.Status.Checkpoint)
	}
	return ctrl.Result{RequeueAfter: r.Requeue}, nil
}

// createOwned creates obj owned by m (deleted with it); one that exists
// already must be m's.
func (r *MigrationReconciler) createOwned(ctx context.Context, m *stasisv1.Migration, obj client.Object) error {
	if err := controllerutil.SetControllerReference(m, obj, r.Client.Scheme()); err != nil {
		return err
	}
	err := r.Client.Create(ctx, obj)
	if apierrors.IsAlreadyExists(err) {
		if err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		if !metav1.IsControlledBy(obj, m) {
			return fmt.Errorf("%s %s exists and is not this migration's", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName())
		}
		return nil
	}
	return err
}

func (r *MigrationReconciler) fail(ctx context.Context, m *stasisv1.Migration, reason, format string, args ...any) (ctrl.Result, error) {
	now := metav1.Now()
	m.Status.Phase, m.Status.Reason, m.Status.Message = stasisv1.MigrationFailed, reason, fmt.Sprintf(format, args...)
	m.Status.CompletionTime = &now
	if err := r.Client.Status().Update(ctx, m); err != nil {
		return ctrl.Result{}, err
	}
	r.Metrics.observe(m)
	r.Events.Eventf(m, nil, corev1.EventTypeWarning, reason, "Migrate", "%s", m.Status.Message)
	return ctrl.Result{}, nil
}

// SetupWithManager registers the reconciler; the Checkpoint and Restores
// it owns wake it.
func (r *MigrationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Requeue == 0 {
		r.Requeue = time.Second
	}
	if r.Reader == nil {
		r.Reader = mgr.GetAPIReader()
	}
	return ctrl.NewControllerManagedBy(mgr).For(&stasisv1.Migration{}).Named("migration").
		Owns(&stasisv1.Checkpoint{}).Owns(&stasisv1.Restore{}).Complete(r)
}
