package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WarmStartSpec says which checkpoint the pods of a template may start
// from. A WarmStart is a grant: a node restores a checkpoint into a pod
// only when the pod's namespace holds the Restore or WarmStart its
// annotation AnnotationRestoreFrom names, and the checkpoint is signed for
// that grant's source.
// +kubebuilder:validation:XValidation:rule="has(self.checkpointRef) != has(self.images)",message="give exactly one of checkpointRef and images"
type WarmStartSpec struct {
	// CheckpointRef is a Checkpoint, in this namespace or another; one of
	// another namespace is admitted only if the WarmStart's creator may
	// restore checkpoints there (the verb "restore" on checkpoints).
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="checkpointRef is immutable: a grant is not re-pointed under its pods"
	CheckpointRef *CheckpointReference `json:"checkpointRef,omitempty"`
	// Images maps a container name to a checkpoint image made outside
	// this cluster (Podman, CRI-O, another cluster): nodes restore it
	// only when it is signed by this cluster for this namespace, or by a
	// key the nodes list as trusted.
	// +optional
	Images map[string]string `json:"images,omitempty"`
	// LazyPages starts the containers before their memory is back.
	// +optional
	LazyPages bool `json:"lazyPages,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:printcolumn:name="Checkpoint",type=string,JSONPath=`.spec.checkpointRef.name`
// +kubebuilder:printcolumn:name="From",type=string,JSONPath=`.spec.checkpointRef.namespace`
// +kubebuilder:printcolumn:name="Lazy",type=boolean,JSONPath=`.spec.lazyPages`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// WarmStart lets the pods of this namespace that name it (annotation
// restore.stasis.dev/from: WarmStart/<name>) start from a checkpoint: every
// replica of a Deployment restores the same warm state.
type WarmStart struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec WarmStartSpec `json:"spec,omitempty"`
}

// +kubebuilder:object:root=true

// WarmStartList is a list of WarmStarts.
type WarmStartList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WarmStart `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WarmStart{}, &WarmStartList{})
}
