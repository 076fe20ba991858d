#!/usr/bin/env bash
# The README's test command: install what is missing, then run every test
# against real runc, CRIU, overlayfs, Podman, a registry and an API server
# (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
# checkpointctl is a peer the tests read stasis archives with.
if ! command -v checkpointctl >/dev/null || ! go version -m "$(command -v checkpointctl)" | grep -q "checkpointctl.*v1.6.0"; then
  GOBIN=/usr/local/bin go install github.com/checkpoint-restore/checkpointctl@v1.6.0
fi
# The cluster tests run a real Kubernetes node (control plane, kubelet),
# containerd 2.4 and CRI-O 1.34, built from the Go module proxy (about 15
# minutes the first time, seconds with Go's build cache).
bash hack/k8s/build.sh
bash hack/containerd/build.sh
bash hack/crio/build.sh
# Tests run the stasis binary as users do; it must be static (the demo
# copies it into a container).
CGO_ENABLED=0 go build -o bin/stasis ./cmd/stasis
export STASIS_BIN=$PWD/bin/stasis
# Generated code (deepcopy, CRDs, RBAC) must match api/ and the markers.
bash hack/generate.sh --check
go vet ./...
# -p 1: the tests share runc, CRIU and Podman on one machine.
go test -p 1 -count=1 -timeout 40m "$@" ./...
# Every parser of outside bytes, fuzzed briefly (hack/fuzz.sh 1h for long runs).
bash hack/fuzz.sh 10s
