// Package v1alpha1 holds the stasis.dev/v1alpha1 API: Checkpoint (freeze a
// pod's containers into checkpoints on its node or in a registry) and
// Restore (a new pod from a Checkpoint).
// +kubebuilder:object:generate=true
// +groupName=stasis.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API's group and version.
	GroupVersion = schema.GroupVersion{Group: "stasis.dev", Version: "v1alpha1"}
	// SchemeBuilder registers the types with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
