package controller

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// A pod pinned again goes to the new node only, whatever node an earlier
// pin (a restored pod's, carried in its checkpoint's template) named, and
// keeps the rest of its affinity.
func TestPinToReplacesAnEarlierPin(t *testing.T) {
	pod := &corev1.Pod{}
	pinTo(pod, "node-b")
	zone := corev1.NodeSelectorRequirement{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"z1"}}
	terms := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	terms[0].MatchExpressions = append(terms[0].MatchExpressions, zone)
	pinTo(pod, "node-a")
	got := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	want := []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{zone},
		MatchFields:      []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"node-a"}}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("pinned twice: %+v, want %+v", got, want)
	}
}
