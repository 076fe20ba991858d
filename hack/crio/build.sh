#!/usr/bin/env bash
# Builds CRI-O (with pinns) and crictl at the versions below from the Go
# module proxy into ${STASIS_CRIO_BIN:-/var/cache/stasis/crio/bin}; the
# tests restore under CRI-O through the stasis runtime handler. Skips what
# is built already. The proxy serves CRI-O v1.34.0 (and v1.31.0) only.
set -euo pipefail
export PATH=/usr/local/go/bin:$PATH
CRIO=v1.34.0
CRICTL=v1.34.0
out=${STASIS_CRIO_BIN:-/var/cache/stasis/crio/bin}
src=${STASIS_CRIO_SRC:-/var/cache/stasis/crio/src-$CRIO}
mkdir -p "$out"
if ! [ -x "$out/crio" ] || [ "$(cat "$out/.crio.version" 2>/dev/null)" != $CRIO ]; then
  if [ ! -d "$src" ]; then
    go mod download -json github.com/cri-o/cri-o@$CRIO >/dev/null
    rm -rf "$src.tmp" && cp -r "$(go env GOMODCACHE)/github.com/cri-o/cri-o@$CRIO" "$src.tmp"
    chmod -R u+w "$src.tmp" && mv "$src.tmp" "$src"
  fi
  s=$(date +%s)
  (cd "$src" && CGO_ENABLED=1 go build -trimpath \
    -tags "containers_image_ostree_stub seccomp containers_image_openpgp exclude_graphdriver_btrfs btrfs_noversion" \
    -o "$out/crio.tmp" ./cmd/crio && make -s -C pinns CC=gcc >/dev/null && cp pinns/../bin/pinns "$out/pinns")
  mv "$out/crio.tmp" "$out/crio" && echo $CRIO > "$out/.crio.version"
  echo "[crio] crio $CRIO built in $(( $(date +%s) - s ))s" >&2
fi
if ! [ -x "$out/crictl" ] || [ "$(cat "$out/.crictl.version" 2>/dev/null)" != $CRICTL ]; then
  GOBIN=$out go install -trimpath -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL" sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL
  echo $CRICTL > "$out/.crictl.version"
fi
