#!/usr/bin/env bash
# Benchmark on a real single-node Kubernetes (containerd 2.4): Restore
# created to pod Ready next to the cold start of the same pod, for a busybox
# counter and a JVM holding ~500 MiB, and scaling a Deployment of that JVM
# from 1 to 5 Ready replicas, cold next to warm (restored from its
# checkpoint image). One run, side by side. Needs root, hack/deps.sh and the
# builds hack/test.sh makes (Kubernetes, containerd).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
bash hack/k8s/build.sh
bash hack/containerd/build.sh
work=$(mktemp -d /var/tmp/stasis-bench-kube.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash hack/jvm-image.sh "$work/jvm.tar"
STASIS_BENCH_JVM_ROOTFS=$work/jvm.tar go test -count=1 -timeout 30m -run '^TestFigures$' -v ./test/kube/ |
  grep -vE '^(=== RUN|--- PASS|PASS|ok|\[kubenode\])'
