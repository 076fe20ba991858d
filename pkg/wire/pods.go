package wire

// PodContainer is one of the pod's containers: its name in the pod and its
// ID in the CRI runtime (the pod status' containerID without the scheme).
type PodContainer struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

// PodCheckpointRequest is a pod checkpoint, asked of the agent of the
// pod's node (POST /v1/pods/{namespace}/{pod}/checkpoint).
type PodCheckpointRequest struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// Name identifies the checkpoint (the Checkpoint object's name); with
	// UID it names the images, which makes a repeated request (a
	// controller that restarted) find the checkpoint already taken.
	Name       string         `json:"name"`
	UID        string         `json:"uid"`
	Containers []PodContainer `json:"containers"`
	// Repository, when set, is where the images are pushed, tagged
	// <name>-<container>.
	Repository string `json:"repository,omitempty"`
	Insecure   bool   `json:"insecure,omitempty"`
	// KeepFrozen leaves the containers frozen once dumped: the caller
	// (a migration) ends them or resumes them with a PodReleaseRequest.
	KeepFrozen bool `json:"keepFrozen,omitempty"`
}

// Release actions: what becomes of a pod's containers a checkpoint left
// frozen.
const (
	// ReleaseResume thaws them where they were (a migration that failed).
	ReleaseResume = "resume"
	// ReleaseKill ends them (their copy runs elsewhere).
	ReleaseKill = "kill"
)

// PodReleaseRequest ends or resumes the frozen containers of a pod
// (POST /v1/pods/{namespace}/{pod}/release).
type PodReleaseRequest struct {
	Namespace  string         `json:"namespace"`
	Pod        string         `json:"pod"`
	Action     string         `json:"action"`
	Containers []PodContainer `json:"containers"`
}

// PodCheckpointResult is a checkpoint per container.
type PodCheckpointResult struct {
	Containers []PodContainerResult `json:"containers"`
}

// PodContainerResult is where one container's checkpoint is.
type PodContainerResult struct {
	Name string `json:"name"`
	// Image is a name in the node's store, or repository@digest once
	// pushed.
	Image          string `json:"image"`
	Digest         string `json:"digest"`
	Size           int64  `json:"size"`
	DurationMillis int64  `json:"durationMillis"`
}
