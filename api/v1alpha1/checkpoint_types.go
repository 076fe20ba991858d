package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CheckpointSpec says which pod to checkpoint and where the result goes.
type CheckpointSpec struct {
	// PodName is the pod, in the Checkpoint's namespace.
	// +kubebuilder:validation:MinLength=1
	PodName string `json:"podName"`
	// Containers limits the checkpoint to these containers; all of the
	// pod's by default. All named containers are frozen before the first
	// is dumped, so they restore to one moment.
	// +optional
	Containers []string `json:"containers,omitempty"`
	// Destination is where the checkpoints are kept: the node's stasis
	// store when empty.
	// +optional
	Destination Destination `json:"destination,omitempty"`
	// KeepFrozen leaves the pod's containers frozen once dumped, for a
	// Migration, which then ends them or, if the move fails, resumes
	// them exactly where they were. Whoever sets it owns thawing them.
	// +optional
	KeepFrozen bool `json:"keepFrozen,omitempty"`
}

// Destination of a checkpoint.
type Destination struct {
	// Image pushes each container's checkpoint as an OCI checkpoint image.
	// +optional
	Image *ImageDestination `json:"image,omitempty"`
}

// ImageDestination is a registry repository.
type ImageDestination struct {
	// Repository, e.g. registry.local/ckpt/web; the tag is
	// <checkpoint name>-<container name>.
	// +kubebuilder:validation:MinLength=1
	Repository string `json:"repository"`
	// Insecure allows a plain-HTTP registry or an unverified certificate.
	// +optional
	Insecure bool `json:"insecure,omitempty"`
}

// Phase of a Checkpoint or a Restore.
// +kubebuilder:validation:Enum=Pending;Running;Succeeded;Failed
type Phase string

// Phases.
const (
	PhasePending   Phase = "Pending"
	PhaseRunning   Phase = "Running"
	PhaseSucceeded Phase = "Succeeded"
	PhaseFailed    Phase = "Failed"
)

// Done says whether a phase is final.
func (p Phase) Done() bool { return p == PhaseSucceeded || p == PhaseFailed }

// CheckpointStatus is what happened.
type CheckpointStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// Reason is a CamelCase word for a failure (PodNotFound, OptedOut,
	// AgentUnreachable, CheckpointFailed, ...); Message explains it.
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// NodeName is where the pod ran; a node-local checkpoint stays there.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Containers are the checkpoints, one per container.
	// +optional
	Containers []ContainerCheckpoint `json:"containers,omitempty"`
	// PodTemplate is the checkpointed pod as declared (images, commands,
	// env, resources, volumes), which a Restore creates again.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	PodTemplate *corev1.PodTemplateSpec `json:"podTemplate,omitempty"`
}

// ContainerCheckpoint is one container's checkpoint.
type ContainerCheckpoint struct {
	Name string `json:"name"`
	// Image is the checkpoint image: name@digest in a registry, or a name
	// in the node's stasis store.
	Image string `json:"image"`
	// Digest is the checkpoint archive's sha256.
	// +optional
	Digest string `json:"digest,omitempty"`
	// Size of the archive in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`
	// DurationMillis is how long the container was being dumped.
	// +optional
	DurationMillis int64 `json:"durationMillis,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ckpt
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.podName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.containers[0].size`
// +kubebuilder:printcolumn:name="Digest",type=string,JSONPath=`.status.containers[0].digest`,priority=1
// +kubebuilder:printcolumn:name="Duration",type=integer,JSONPath=`.status.containers[0].durationMillis`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Checkpoint captures a pod's containers.
type Checkpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CheckpointSpec   `json:"spec,omitempty"`
	Status CheckpointStatus `json:"status,omitempty"`
}

// Done says whether the Checkpoint has reached a final phase.
func (c *Checkpoint) Done() bool { return c.Status.Phase.Done() }

// +kubebuilder:object:root=true

// CheckpointList is a list of Checkpoints.
type CheckpointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Checkpoint `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Checkpoint{}, &CheckpointList{})
}
