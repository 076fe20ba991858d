// Command stasis-runc is the OCI runtime behind the RuntimeClass "stasis":
// runc, except that a container whose pod names a checkpoint is restored
// instead of created (see pkg/runtimeclass). A shim or conmon calls it exactly
// as it calls runc.
package main

import (
	"os"

	"github.com/stasis-dev/stasis/pkg/runtimeclass"
)

func main() {
	os.Exit(runtimeclass.Main(os.Args[1:]))
}
