package runtimeclass

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ociSpec is what the wrapper reads of a bundle's config.json. It is not
// runtime-spec's type: only the fields it needs are read.
type ociSpec struct {
	Root struct {
		Path string `json:"path"`
	} `json:"root"`
	Hostname    string            `json:"hostname"`
	Annotations map[string]string `json:"annotations"`
	Mounts      []struct {
		Destination string `json:"destination"`
		Source      string `json:"source"`
	} `json:"mounts"`
}

func readSpec(bundle string) (*ociSpec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var s ociSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w", bundle, err)
	}
	return &s, nil
}

func (s *ociSpec) rootPath(bundle string) string {
	if filepath.IsAbs(s.Root.Path) {
		return s.Root.Path
	}
	return filepath.Join(bundle, s.Root.Path)
}

// hostname is the name the new pod gives its containers: the spec's, or
// for a container joining its pod's UTS namespace, the content of the
// /etc/hostname the runtime bind-mounts.
func (s *ociSpec) hostname(bundle string) string {
	if s.Hostname != "" {
		return s.Hostname
	}
	for _, m := range s.Mounts {
		if m.Destination == "/etc/hostname" {
			if b, err := os.ReadFile(m.Source); err == nil {
				return strings.TrimSpace(string(b))
			}
		}
	}
	return ""
}
