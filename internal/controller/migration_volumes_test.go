package controller

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A pod migrates only if the target node can mount its persistent
// volumes; what the API server holds (claims, volumes, the target's
// labels) decides.
func TestMigrationVolumesReach(t *testing.T) {
	ns := ns(t)
	zone := func(z string) *corev1.VolumeNodeAffinity {
		return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{z}}}}}}}
	}
	pv := func(name string, src corev1.PersistentVolumeSource, a *corev1.VolumeNodeAffinity) {
		mustCreate(t, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name},
			Spec: corev1.PersistentVolumeSpec{Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, PersistentVolumeSource: src, NodeAffinity: a}})
	}
	claim := func(name, volume string) {
		mustCreate(t, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
				VolumeName: volume}})
	}
	local := corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/data"}}
	nfs := corev1.PersistentVolumeSource{NFS: &corev1.NFSVolumeSource{Server: "nfs", Path: "/"}}
	pv("east", local, zone("east"))
	pv("net", nfs, nil)
	pv("host", corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/data"}}, nil)
	claim("east", ns+"-east")
	claim("net", ns+"-net")
	claim("host", ns+"-host")
	claim("unbound", "")
	mustCreate(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns + "-east", Labels: map[string]string{"zone": "east"}}})
	mustCreate(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns + "-west", Labels: map[string]string{"zone": "west"}}})

	r := &MigrationReconciler{Client: k, Reader: k}
	for _, c := range []struct {
		claims  []string
		target  string
		refused string
	}{
		{claims: nil, target: "west"},
		{claims: []string{"net"}, target: "west"},
		{claims: []string{"east", "net"}, target: "east"},
		{claims: []string{"net", "east"}, target: "west", refused: "is not reachable from node " + ns + "-west"},
		{claims: []string{"host"}, target: "east", refused: "is a host path"},
		{claims: []string{"unbound"}, target: "east", refused: "claim unbound is not bound"},
		{claims: []string{"missing"}, target: "east", refused: "claim missing"},
	} {
		p := pod(ns, "web", nil)
		for _, cl := range c.claims {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: cl,
				VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: cl}}})
		}
		err := r.volumesReach(ctx, p, ns+"-"+c.target)
		if c.refused == "" && err != nil || c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused)) {
			t.Errorf("claims %v to %s: got %v, want refused %q", c.claims, c.target, err, c.refused)
		}
	}
}
