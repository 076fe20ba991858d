package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestMayCheckpoint(t *testing.T) {
	for _, c := range []struct {
		name    string
		marks   map[string]string
		leaving bool
		// refused names the mark the error must quote; "" means allowed.
		refused string
	}{
		{"no marks", nil, false, ""},
		{"no marks, leaving", nil, true, ""},
		{"unrelated marks", map[string]string{"app": "web"}, true, ""},
		{"checkpoint=never", map[string]string{Checkpoint: Never}, false, "stasis.dev/checkpoint=never"},
		{"checkpoint=never, leaving", map[string]string{Checkpoint: Never}, true, "stasis.dev/checkpoint=never"},
		{"both, not leaving", map[string]string{Checkpoint: Never, Migrate: Never}, false, "stasis.dev/checkpoint=never"},
		{"migrate=never stays", map[string]string{Migrate: Never}, false, ""},
		{"migrate=never, leaving", map[string]string{Migrate: Never}, true, "stasis.dev/migrate=never"},
		// Only the exact value opts out.
		{"checkpoint=always", map[string]string{Checkpoint: "always"}, true, ""},
		{"checkpoint=Never", map[string]string{Checkpoint: "Never"}, true, ""},
		{"checkpoint empty", map[string]string{Checkpoint: ""}, true, ""},
		{"migrate=true, leaving", map[string]string{Migrate: "true"}, true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := MayCheckpoint("pod ns/p", c.marks, c.leaving)
			if c.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrOptedOut) {
				t.Fatalf("error %v does not wrap ErrOptedOut", err)
			}
			if msg := err.Error(); !strings.Contains(msg, "pod ns/p") || !strings.Contains(msg, c.refused) {
				t.Fatalf("error %q does not name both the subject and %s", msg, c.refused)
			}
		})
	}
}
