package monitor

import (
	"encoding/json"
	"os"
)

// ReadExit returns how the container exited, or nil while it runs.
func ReadExit(path string) *Exit {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var e Exit
	if json.Unmarshal(b, &e) != nil {
		return nil
	}
	return &e
}
