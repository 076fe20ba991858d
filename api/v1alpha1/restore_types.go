package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// RestoreSpec says which checkpoint becomes which new pod.
type RestoreSpec struct {
	// CheckpointRef is the Checkpoint, in this namespace or another; one
	// of another namespace is admitted only if the Restore's creator may
	// restore checkpoints there (the verb "restore" on checkpoints, which
	// only stasis-admin has: reading a checkpoint's status is not enough).
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="checkpointRef is immutable: a grant is not re-pointed under its pods"
	CheckpointRef CheckpointReference `json:"checkpointRef"`
	// PodName is the new pod's name, in the Restore's namespace.
	// +kubebuilder:validation:MinLength=1
	PodName string `json:"podName"`
	// LazyPages starts the containers before their memory is back: pages
	// come in on first touch and in the background (userfaultfd), so a
	// large heap does not delay the start.
	// +optional
	LazyPages bool `json:"lazyPages,omitempty"`
	// ServiceAccountName runs the new pod as this service account of the
	// Restore's namespace; by default its "default" one, never the source
	// pod's (a name of another namespace means other rights here).
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// NodeName places the new pod on this node. A checkpoint kept in
	// another node's store is fetched from that node's agent; without
	// NodeName, such a checkpoint restores on its own node.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
}

// CheckpointReference names a Checkpoint.
type CheckpointReference struct {
	// Namespace defaults to that of the Restore or WarmStart naming it.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// RestoreStatus is what happened.
type RestoreStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// NodeName is where the pod was placed.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
	// PodUID is the pod this Restore created: the only pod its grant
	// restores into (a pod of the same name made by anyone else, before
	// or after, is refused by the node).
	// +optional
	PodUID types.UID `json:"podUID,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// CompletionTime is when the pod became Ready.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Checkpoint",type=string,JSONPath=`.spec.checkpointRef.name`
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.podName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Restore makes a new pod from a Checkpoint.
type Restore struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RestoreSpec   `json:"spec,omitempty"`
	Status RestoreStatus `json:"status,omitempty"`
}

// Done says whether the Restore has reached a final phase.
func (r *Restore) Done() bool { return r.Status.Phase.Done() }

// +kubebuilder:object:root=true

// RestoreList is a list of Restores.
type RestoreList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Restore `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Restore{}, &RestoreList{})
}
