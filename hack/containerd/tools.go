//go:build tools

// Package tools pins the containerd the Kubernetes e2e tests run (built by
// hack/containerd/build.sh, never imported by stasis). 2.4 is the release
// that dropped containerd's own restore path, so it is the one stasis must
// restore on by itself.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
