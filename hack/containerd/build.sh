#!/usr/bin/env bash
# Builds containerd, its runc shim and ctr at the version go.mod pins into
# ${STASIS_CONTAINERD_BIN:-/var/cache/stasis/containerd/bin}. Skips what is
# built already; Go's build cache makes rebuilds quick.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=/usr/local/go/bin:$PATH
out=${STASIS_CONTAINERD_BIN:-/var/cache/stasis/containerd/bin}
V=$(awk '/containerd\/containerd\/v2 v/{print $NF}' go.mod)
P=github.com/containerd/containerd/v2
mkdir -p "$out"
for c in containerd containerd-shim-runc-v2 ctr; do
  if [ -x "$out/$c" ] && [ "$(cat "$out/.$c.version" 2>/dev/null)" = "$V" ]; then continue; fi
  tags="urfave_cli_no_docs no_btrfs"; env=()
  # The shim is static, as upstream ships it.
  [ "$c" = containerd-shim-runc-v2 ] && { tags="urfave_cli_no_docs no_grpc"; env=(CGO_ENABLED=0); }
  s=$(date +%s)
  env "${env[@]}" go build -tags "$tags" -ldflags "-s -w -X $P/version.Version=$V" -o "$out/$c.tmp" "$P/cmd/$c"
  mv "$out/$c.tmp" "$out/$c"; echo "$V" > "$out/.$c.version"
  echo "[containerd] $c $V built in $(( $(date +%s) - s ))s" >&2
done
