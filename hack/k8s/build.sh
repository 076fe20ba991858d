#!/usr/bin/env bash
# Builds the Kubernetes components the tests run (the control plane and a kubelet),
# at the version hack/k8s/go.mod pins, into ${STASIS_K8S_BIN:-/var/cache/stasis/k8s/bin}.
# Skips what is built already; Go's build cache makes rebuilds quick.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=/usr/local/go/bin:$PATH
out=${STASIS_K8S_BIN:-/var/cache/stasis/k8s/bin}
V=$(awk '/k8s.io\/kubernetes v/{print $NF}' go.mod)
mkdir -p "$out"
for c in ${STASIS_K8S_COMPONENTS:-kube-apiserver kube-controller-manager kube-scheduler kubelet}; do
  if [ -x "$out/$c" ] && "$out/$c" --version 2>/dev/null | grep -q "$V"; then continue; fi
  LD="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=$V -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$V" | cut -d. -f2) -X $p.gitTreeState=clean"
  done
  s=$(date +%s)
  go build -ldflags "$LD" -o "$out/$c.tmp" k8s.io/kubernetes/cmd/$c
  mv "$out/$c.tmp" "$out/$c"
  echo "[k8s] $c $V built in $(( $(date +%s) - s ))s" >&2
done
