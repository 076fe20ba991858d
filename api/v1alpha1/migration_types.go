package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MigrationMode is how a pod moves.
// +kubebuilder:validation:Enum=Offline
type MigrationMode string

// Modes. Offline freezes the pod, dumps it whole, moves the checkpoint to
// the target node's agent and restores it there.
const (
	MigrationOffline MigrationMode = "Offline"
)

// MigrationSpec says which pod moves where.
type MigrationSpec struct {
	// PodName is the pod, in the Migration's namespace: one without an
	// owner, which keeps its name (its copy on the target node is created
	// once it is gone), or a ReplicaSet's (a Deployment's), whose copy is
	// made beside it under a new name and joins the ReplicaSet once
	// Ready.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="podName is immutable"
	PodName string `json:"podName"`
	// TargetNode is where the pod goes; by default the first Ready,
	// schedulable node other than the pod's, by name.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="targetNode is immutable"
	TargetNode string `json:"targetNode,omitempty"`
	// Mode is Offline, the default.
	// +optional
	// +kubebuilder:default=Offline
	Mode MigrationMode `json:"mode,omitempty"`
	// LazyPages starts the pod on the target node before its memory has
	// arrived: the target reads the checkpoint where it lies, in the
	// source node's store, page by page on first touch and the rest in
	// the background (userfaultfd), so the downtime does not grow with
	// the memory. Until every page is in, the pod's memory is partly on
	// the source node, which must stay up.
	// +optional
	LazyPages bool `json:"lazyPages,omitempty"`
}

// MigrationPhase is where a Migration is.
// +kubebuilder:validation:Enum=Pending;Checkpointing;Restoring;RollingBack;Succeeded;Failed
type MigrationPhase string

// Migration phases. Checkpointing: the source pod is being frozen and
// dumped (it stays frozen once dumped). Restoring: the source pod is gone
// and its checkpoint is being restored on the target node. RollingBack:
// that restore failed and the checkpoint is being restored on the source
// node instead, so that the pod runs somewhere.
const (
	MigrationPending       MigrationPhase = "Pending"
	MigrationCheckpointing MigrationPhase = "Checkpointing"
	MigrationRestoring     MigrationPhase = "Restoring"
	MigrationRollingBack   MigrationPhase = "RollingBack"
	MigrationSucceeded     MigrationPhase = "Succeeded"
	MigrationFailed        MigrationPhase = "Failed"
)

// Done says whether a phase is final.
func (p MigrationPhase) Done() bool { return p == MigrationSucceeded || p == MigrationFailed }

// MigrationStatus is what happened.
type MigrationStatus struct {
	// +optional
	Phase MigrationPhase `json:"phase,omitempty"`
	// Reason is a CamelCase word for a failure (PodNotFound, OptedOut,
	// NoTargetNode, CheckpointFailed, RestoreFailed, ...); Message
	// explains it and says where the pod runs now.
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// SourceNode is where the pod ran.
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// TargetNode is where it goes.
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// PodUID is the source pod's: the Migration moves that pod and no
	// other of the same name.
	// +optional
	PodUID string `json:"podUID,omitempty"`
	// TargetPod is the pod on the target node: the same name for a pod
	// without an owner or a StatefulSet's; for a ReplicaSet's pod, a name of the
	// ReplicaSet's kind, the pod joining it once Ready (the source pod
	// runs frozen until then, so the ReplicaSet never starts a replica).
	// +optional
	TargetPod string `json:"targetPod,omitempty"`
	// Checkpoint and Restore are the objects the Migration made (named
	// after it; a rollback's Restore ends in "-rollback").
	// +optional
	Checkpoint string `json:"checkpoint,omitempty"`
	// +optional
	Restore string `json:"restore,omitempty"`
	// SourceContainers are the source pod's containers as its runtime
	// knows them, recorded before the pod is deleted: its node's agent
	// ends them by these IDs once it is gone.
	// +optional
	SourceContainers []SourceContainer `json:"sourceContainers,omitempty"`
	// SourceEnded says the source pod is deleted and its frozen
	// containers ended.
	// +optional
	SourceEnded bool `json:"sourceEnded,omitempty"`
	// BytesMoved is the size of the checkpoint archives the target node
	// fetched.
	// +optional
	BytesMoved int64 `json:"bytesMoved,omitempty"`
	// FreezeTime is when the Checkpoint that freezes the pod was asked
	// for; DowntimeMillis runs from it to the moment the controller saw
	// the pod's copy Ready on the target node.
	// +optional
	FreezeTime *metav1.MicroTime `json:"freezeTime,omitempty"`
	// +optional
	DowntimeMillis int64 `json:"downtimeMillis,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
}

// SourceContainer is a container of the source pod.
type SourceContainer struct {
	Name string `json:"name"`
	// ID is its ID in the CRI runtime.
	ID string `json:"id"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mig
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.podName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.status.sourceNode`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.targetNode`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Downtime",type=integer,JSONPath=`.status.downtimeMillis`
// +kubebuilder:printcolumn:name="Bytes",type=integer,JSONPath=`.status.bytesMoved`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Migration moves a running pod to another node with its memory: a
// Checkpoint of it that leaves it frozen, then a Restore of that
// checkpoint under the same name on the target node, whose agent fetches
// the checkpoint from the source node's agent.
type Migration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MigrationSpec   `json:"spec,omitempty"`
	Status MigrationStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// MigrationList is a list of Migrations.
type MigrationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Migration `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Migration{}, &MigrationList{})
}
