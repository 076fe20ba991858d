// Command stasis-runc is the OCI runtime behind the RuntimeClass "stasis":
// runc, except that a container whose pod names a checkpoint is restored
// instead of created (see pkg/ociwrap). A shim or conmon calls it exactly
// as it calls runc.
package main

import (
	"os"

	"github.com/stasis-dev/stasis/pkg/ociwrap"
)

func main() {
	os.Exit(ociwrap.Main(os.Args[1:]))
}
