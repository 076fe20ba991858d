package wire

// CheckpointRequest is the body of POST /v1/containers/{name}/checkpoint.
type CheckpointRequest struct {
	LeaveRunning   bool   `json:"leave_running"`
	Compression    string `json:"compression,omitempty"`
	TCPEstablished bool   `json:"tcp_established"`
	FileLocks      bool   `json:"file_locks"`
	// CreateImage makes a checkpoint image of this name instead of a
	// stored archive; Push sends it to its registry.
	CreateImage string `json:"create_image,omitempty"`
	Push        bool   `json:"push"`
	// EncryptTo are age recipients ("age1...") the archive is encrypted to.
	EncryptTo []string `json:"encrypt_to,omitempty"`
}

// RestoreRequest is the body of POST /v1/restore.
type RestoreRequest struct {
	// Checkpoint is a stored checkpoint's ID, or a container whose latest
	// checkpoint is restored; Image a checkpoint image. One of the two.
	Checkpoint     string `json:"checkpoint,omitempty"`
	Image          string `json:"image,omitempty"`
	Name           string `json:"name,omitempty"`
	LazyPages      bool   `json:"lazy_pages"`
	TCPEstablished bool   `json:"tcp_established"`
	FileLocks      bool   `json:"file_locks"`
	// Volumes maps a bind mount's destination in the checkpoint to the
	// host path it gets (the CLI's --volume SRC:DST).
	Volumes map[string]string `json:"volumes,omitempty"`
	// Privileged is the CLI's --privileged.
	Privileged bool `json:"privileged"`
}
