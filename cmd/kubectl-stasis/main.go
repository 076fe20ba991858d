// Command kubectl-stasis is the kubectl plugin: `kubectl stasis checkpoint
// pod/web`, `restore`, `list`, `inspect` (internal/plugin).
package main

import (
	"os"

	"github.com/stasis-dev/stasis/internal/plugin"
)

func main() {
	if err := plugin.New(os.Stdout).Execute(); err != nil {
		os.Exit(1)
	}
}
