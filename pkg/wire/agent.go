package wire

import "time"

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

// CheckpointResult answers a checkpoint: where it went and where time went.
type CheckpointResult struct {
	Container string `json:"container"`
	Archive   string `json:"archive"`
	StoreID   string `json:"store_id,omitempty"`
	Image     string `json:"image,omitempty"`
	// Pushed is the digest of the image's manifest as pushed.
	Pushed string     `json:"pushed,omitempty"`
	Size   int64      `json:"size"`
	Digest string     `json:"digest"`
	CRIU   *DumpStats `json:"criu,omitempty"`
	Phases Phases     `json:"phases_us"`
}

// DumpStats are the figures CRIU records for a dump.
type DumpStats struct {
	FreezingTime uint32 `json:"freezing_time_us"`
	FrozenTime   uint32 `json:"frozen_time_us"`
	MemdumpTime  uint32 `json:"memdump_time_us"`
	MemwriteTime uint32 `json:"memwrite_time_us"`
	PagesScanned uint64 `json:"pages_scanned"`
	PagesWritten uint64 `json:"pages_written"`
}

// RestoreResult answers a restore.
type RestoreResult struct {
	Container string        `json:"container"`
	ID        string        `json:"id"`
	Pid       int           `json:"pid"`
	CRIU      *RestoreStats `json:"criu,omitempty"`
	Phases    Phases        `json:"phases_us"`
	// PagesFrom says where the restored memory was read from: "registry"
	// (lazy pages read from a checkpoint image's blob in its registry, by
	// range requests, and the blob kept once complete), "archive"
	// (lazy: where it lies in the archive, frame by frame), "memory" (an
	// indexed archive unpacked into a tmpfs of the restore's own), "disk"
	// (unpacked onto the disk: another engine's, a gzip or an encrypted
	// archive, or too little memory free).
	PagesFrom string `json:"pages_from,omitempty"`
}

// RestoreStats are the figures CRIU records for a restore.
type RestoreStats struct {
	ForkingTime   uint32 `json:"forking_time_us"`
	RestoreTime   uint32 `json:"restore_time_us"`
	PagesRestored uint64 `json:"pages_restored"`
}

// Phases are stasis' own timings of an operation's steps, in microseconds.
type Phases map[string]int64

// Add counts d against the step name.
func (p Phases) Add(name string, d time.Duration) { p[name] += d.Microseconds() }
