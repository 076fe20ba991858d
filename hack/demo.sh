#!/usr/bin/env bash
# The README's main job: install what is missing, build stasis, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
CGO_ENABLED=0 go build -o bin/stasis ./cmd/stasis
exec ./bin/stasis demo "$@"
