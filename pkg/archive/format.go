// Package archive is the checkpoint archive format shared with CRI-O, Podman
// and containerd: a tar (plain, zstd or gzip) holding config.dump, spec.dump,
// checkpoint/ (CRIU images), rootfs-diff.tar, deleted.files, stats-dump and
// dump.log. Names come from checkpointctl's lib so that checkpointctl reads
// what stasis writes.
package archive

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/checkpoint-restore/go-criu/v8/stats"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Member names of a checkpoint archive.
const (
	ConfigDump    = metadata.ConfigDumpFile
	SpecDump      = metadata.SpecDumpFile
	CheckpointDir = metadata.CheckpointDirectory
	RootfsDiff    = metadata.RootFsDiffTar
	DeletedFiles  = metadata.DeletedFilesFile
	DumpLog       = metadata.DumpLogFile
	RestoreLog    = metadata.RestoreLogFile
	StatsDump     = stats.StatsDump
	StatsRestore  = stats.StatsRestore
)

// Engine is the value stasis writes as io.container.manager and as the
// org.criu.checkpoint.engine.name annotation.
const Engine = "stasis"

// EngineVersion is stasis' version as recorded in checkpoints: the module
// version of a released build, else the commit it was built from.
func EngineVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}

// Config is config.dump. It carries the fields CRI-O and checkpointctl read
// (metadata.ContainerConfig) plus those Podman needs on import
// (rootfsImageID, RawImageName), so one file serves every engine.
type Config struct {
	metadata.ContainerConfig
	RootfsImageID string `json:"rootfsImageID,omitempty"`
	RawImageName  string `json:"RawImageName,omitempty"`
	// CreateNetNS tells Podman to make the network namespace the restore
	// joins: stasis dumps a network-none container's namespace as external.
	CreateNetNS bool     `json:"createNetNS,omitempty"`
	Command     []string `json:"command,omitempty"`
	// Spec is read by Podman's import, which rebuilds its container from it.
	Spec *specs.Spec `json:"spec,omitempty"`
}

// ImageName is the name of the base image the checkpoint needs, whichever
// engine wrote it.
func (c *Config) ImageName() string {
	for _, n := range []string{c.RootfsImageName, c.RawImageName, c.RootfsImage} {
		if n != "" {
			return n
		}
	}
	return ""
}

// ImageID is the base image's ID (config digest hex), if the writer recorded it.
func (c *Config) ImageID() string {
	if c.RootfsImageRef != "" {
		return c.RootfsImageRef
	}
	return c.RootfsImageID
}

// Dir is an unpacked checkpoint: the members of an archive on disk.
type Dir string

// Config reads config.dump.
func (d Dir) Config() (*Config, error) {
	var c Config
	if err := d.readJSON(ConfigDump, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Spec reads spec.dump.
func (d Dir) Spec() (*specs.Spec, error) {
	var s specs.Spec
	if err := d.readJSON(SpecDump, &s); err != nil {
		return nil, err
	}
	if s.Process == nil || s.Root == nil {
		return nil, fmt.Errorf("%w: %s: spec has no process or root", ErrInvalid, SpecDump)
	}
	return &s, nil
}

// Deleted reads deleted.files; a missing file means nothing was deleted.
func (d Dir) Deleted() ([]string, error) {
	var del []string
	err := d.readJSON(DeletedFiles, &del)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return del, err
}

// ReadMember reads one member file (see the package function).
func (d Dir) ReadMember(name string, max int64) ([]byte, error) {
	return ReadMember(string(d), name, max)
}

// OpenMember opens one member file (see the package function).
func (d Dir) OpenMember(name string) (*os.File, error) {
	return OpenMember(string(d), name)
}

// Images is the directory of CRIU images.
func (d Dir) Images() string { return filepath.Join(string(d), CheckpointDir) }

// RootfsDiff is the path of rootfs-diff.tar; it may not exist.
func (d Dir) RootfsDiff() string { return filepath.Join(string(d), RootfsDiff) }

// Validate checks that the members a restore needs are present and are
// what they claim to be: regular files, and a directory of CRIU images.
func (d Dir) Validate() error {
	if err := memberDir(string(d), CheckpointDir); err != nil {
		return err
	}
	for _, m := range []string{ConfigDump, SpecDump, CheckpointDir + "/inventory.img"} {
		f, err := OpenMember(string(d), m)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: not a checkpoint archive: %s is missing", ErrInvalid, m)
		}
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

// WriteJSON writes v as a member file of the checkpoint directory.
func WriteJSON(dir, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), b, 0o600)
}

func (d Dir) readJSON(name string, v any) error {
	b, err := ReadMember(string(d), name, maxMetadata)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: parse %s: %v", ErrInvalid, name, err)
	}
	return nil
}
