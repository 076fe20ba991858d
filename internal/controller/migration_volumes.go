package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// volumesReach refuses a pod whose persistent volumes the target node
// cannot mount: its copy would hang in ContainerCreating there, after the
// source is gone. A volume without node affinity (a network volume) is
// taken to be reachable from every node; one pinned to nodes (a local
// volume, a zonal disk) must admit the target. emptyDir volumes start empty
// on the target.
//
// Claims and volumes are read past the cache (Reader): the controller
// watches neither, and may only get them.
func (r *MigrationReconciler) volumesReach(ctx context.Context, pod *corev1.Pod, target string) error {
	var node *corev1.Node
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		var pvc corev1.PersistentVolumeClaim
		if err := r.Reader.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: v.PersistentVolumeClaim.ClaimName}, &pvc); err != nil {
			return fmt.Errorf("volume %s: claim %s: %w", v.Name, v.PersistentVolumeClaim.ClaimName, err)
		}
		if pvc.Spec.VolumeName == "" {
			return fmt.Errorf("volume %s: claim %s is not bound", v.Name, pvc.Name)
		}
		var pv corev1.PersistentVolume
		if err := r.Reader.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, &pv); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if pv.Spec.HostPath != nil {
			return fmt.Errorf("volume %s: persistent volume %s is a host path of node %s, which no other node reaches", v.Name, pv.Name, pod.Spec.NodeName)
		}
		a := pv.Spec.NodeAffinity
		if a == nil || a.Required == nil {
			continue
		}
		if node == nil {
			node = &corev1.Node{}
			if err := r.Client.Get(ctx, client.ObjectKey{Name: target}, node); err != nil {
				return fmt.Errorf("target node %s: %w", target, err)
			}
		}
		ok, err := corev1helpers.MatchNodeSelectorTerms(node, a.Required)
		if err != nil {
			return fmt.Errorf("volume %s: persistent volume %s: %w", v.Name, pv.Name, err)
		}
		if !ok {
			return fmt.Errorf("volume %s: persistent volume %s is not reachable from node %s (its node affinity)", v.Name, pv.Name, target)
		}
	}
	return nil
}
