package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/image"
)

// AdoptCheckpoint stores an archive another engine wrote (the kubelet's,
// through containerd or CRI-O) as checkpoint image ref. Their archives are
// uncompressed, so it is rewritten once with stasis' parallel zstd, which
// then becomes the image's layer without another copy; the original is
// removed, as nothing else collects the kubelet's checkpoints.
func (e *Engine) AdoptCheckpoint(path, ref string) (*image.Image, error) {
	work, lock, err := e.workDir("adopt-")
	if err != nil {
		return nil, err
	}
	defer func() { lock.Close(); os.RemoveAll(work) }()
	dir, err := archive.Extract(path, filepath.Join(work, "dir"), archive.ReadOptions{})
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", path, err)
	}
	if err := dir.Validate(); err != nil {
		return nil, fmt.Errorf("adopt %s: %w", path, err)
	}
	members, err := membersOf(string(dir))
	if err != nil {
		return nil, err
	}
	out := filepath.Join(work, "checkpoint.tar.zst")
	if _, err := archive.WriteFile(out, archive.Contents{Dir: string(dir), Members: members},
		archive.WriteOptions{Compression: archive.Zstd}); err != nil {
		return nil, fmt.Errorf("adopt %s: %w", path, err)
	}
	img, err := e.BuildCheckpointImage(out, ref, true, nil)
	if err != nil {
		return nil, err
	}
	os.Remove(path)
	return img, nil
}

// membersOf lists a checkpoint directory's entries: the members stasis
// knows in their usual order (metadata before pages), then the rest (the
// container log and status files engines add) by name.
func membersOf(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	present := map[string]bool{}
	for _, e := range entries {
		present[e.Name()] = true
	}
	var members, rest []string
	for _, m := range archive.Members {
		if present[m] {
			members = append(members, m)
			delete(present, m)
		}
	}
	for m := range present {
		rest = append(rest, m)
	}
	sort.Strings(rest)
	return append(members, rest...), nil
}
