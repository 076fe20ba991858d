#!/usr/bin/env bash
# Benchmark: push and pull of a ~500 MiB checkpoint image through a local
# docker-registry, stasis next to Podman 4.3 on the same image in one run.
# Prints seconds and MiB/s for each, with the ratios. Needs root and
# hack/deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
MIB=${MIB:-500}
CGO_ENABLED=0 go build -o bin/stasis ./cmd/stasis

work=$(mktemp -d /var/tmp/stasis-bench-reg.XXXXXX)
root=$work/stasis-root run=/run/stasis-bench-reg-$$
S="bin/stasis --root $root --runroot $run"
cleanup() {
  $S rm -f big >/dev/null 2>&1 || true
  stop_registry $work/r1; stop_registry $work/r2
  podman rmi -f "${podman_imgs[@]}" >/dev/null 2>&1 || true
  rm -rf "$work" "$run"
}
podman_imgs=()
trap cleanup EXIT

# Two fresh registries, so that neither tool finds the blobs already there.
. hack/lib/bench.sh
REG1=$(start_registry $work/r1)
REG2=$(start_registry $work/r2)

# A checkpoint of MIB MiB of incompressible state (the demo's sample program).
mkdir -p "$work/rootfs"
cp bin/stasis "$work/rootfs/sample"
tar -C "$work/rootfs" -cf "$work/sample.tar" .
$S image import "$work/sample.tar" localhost/bench-sample:1 >/dev/null
$S run --name big localhost/bench-sample:1 /sample __sample --warmup 0s --mib "$MIB" >/dev/null
until $S logs big | grep -q tick; do sleep 0.2; done
$S checkpoint big --create-image localhost/bench-ckpt:1 >/dev/null

t=$(now); $S push localhost/bench-ckpt:1 "$REG1/s/ckpt:1" --tls-verify=false; s_push=$(since $t)
$S rm -f big >/dev/null
$S rmi localhost/bench-ckpt:1 localhost/bench-sample:1 >/dev/null
t=$(now); $S pull "$REG1/s/ckpt:1" --tls-verify=false >/dev/null; s_pull=$(since $t)

podman_imgs=("$REG1/s/ckpt:1" "$REG2/p/ckpt:1")
podman rmi -f "${podman_imgs[@]}" >/dev/null 2>&1 || true
t=$(now); podman pull -q --tls-verify=false "$REG1/s/ckpt:1" >/dev/null; p_pull=$(since $t)
t=$(now); podman push -q --tls-verify=false "$REG1/s/ckpt:1" "$REG2/p/ckpt:1"; p_push=$(since $t)

mib=$(du -m "$root/images/oci/blobs" | tail -1 | awk '{print $1}')
printf '\nCheckpoint image of %s MiB, one layer, local docker-registry, one run (seconds, MiB/s)\n' "$mib"
printf '%-10s %10s %10s %10s %10s %8s\n' "" "stasis s" "podman s" "stasis/s" "podman/s" ratio
for op in push pull; do
  s=$(eval echo \$s_$op) p=$(eval echo \$p_$op)
  printf '%-10s %10.3f %10.3f %10.0f %10.0f %8.2f\n' $op "$s" "$p" \
    "$(echo "$mib/$s" | bc -l)" "$(echo "$mib/$p" | bc -l)" "$(echo "$s/$p" | bc -l)"
done
