#!/usr/bin/env bash
# Benchmark of offline migration on two Kubernetes nodes on this machine
# (test/kubenode's cluster: node-a on containerd, node-b on CRI-O): for a
# busybox counter and hack/memhog holding 64 MiB, 512 MiB and 2 GiB of
# random bytes (and 512 MiB that compresses), the downtime the application
# sees (its last log line on node-a to its first on node-b), the downtime
# the Migration reports, the
# total time and the bytes moved, eager and lazy; and beside them the same
# pod moved by hand with what Kubernetes has (the kubelet's checkpoint API
# on node-b, the archive made a checkpoint image, loaded into a second
# CRI-O node, node-c, and a pod of it created there). One run, side by
# side. Needs root,
# hack/deps.sh and the builds hack/test.sh makes (Kubernetes, containerd,
# CRI-O).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
bash hack/k8s/build.sh
bash hack/containerd/build.sh
bash hack/crio/build.sh
STASIS_BENCH_MIGRATE=1 go test -count=1 -timeout 30m -run '^TestFigures$' -v ./test/migrate/ |
  grep -vE '^(=== RUN|--- PASS|PASS|ok|\[kubenode\])'
