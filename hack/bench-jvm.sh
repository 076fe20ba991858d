#!/usr/bin/env bash
# Benchmark: a JVM holding ~500 MiB of heap, run, checkpointed and restored
# by stasis and by Podman 4.3 in the same run, on the same image. Prints
# cold start to ready, checkpoint time, archive size and restore time to the
# first sign of life, with the ratios. Needs root and hack/deps.sh.
# RANDOM_HEAP=1: a heap of random bytes instead of one that compresses
# 180:1 (hack/jvm-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
HEAP_MIB=${HEAP_MIB:-500}
WARM_PASSES=${WARM_PASSES:-80}
RANDOM_HEAP=${RANDOM_HEAP:-0}
JDK=${JDK:-$(ls -d /usr/lib/jvm/java-17-openjdk-* 2>/dev/null | head -1)}
CGO_ENABLED=0 go build -o bin/stasis ./cmd/stasis

work=$(mktemp -d /var/tmp/stasis-bench.XXXXXX)
root=$work/stasis-root run=/run/stasis-bench-$$
S="bin/stasis --root $root --runroot $run"
IMG=localhost/stasis-bench-jvm:1
cleanup() {
  $S rm -f jvm >/dev/null 2>&1 || true
  podman rm -f jvm-bench >/dev/null 2>&1 || true
  podman rmi -f $IMG >/dev/null 2>&1 || true
  rm -rf "$work" "$run"
}
trap cleanup EXIT

# The image: busybox, a jlink'ed JRE and a program that warms up (hack/jvm-image.sh).
HEAP_MIB=$HEAP_MIB WARM_PASSES=$WARM_PASSES RANDOM_HEAP=$RANDOM_HEAP JDK=$JDK bash hack/jvm-image.sh $work/jvm.tar
$S image import $work/jvm.tar $IMG >/dev/null
podman import -q $work/jvm.tar $IMG >/dev/null
JAVA_ARGS="/opt/jre/bin/java -XX:+UseSerialGC -XX:-UsePerfData -Xms$((HEAP_MIB+100))m -Xmx$((HEAP_MIB+200))m -cp /app Warm"

. hack/lib/bench.sh
wait_log() { # podman container regex
  for _ in $(seq 1 6000); do
    podman logs "$1" 2>/dev/null | grep -qE "$2" && return 0
    sleep 0.01
  done
  echo "timed out waiting for $2 in $1" >&2; exit 1
}
# wait_file ID REGEX: until stasis container ID's log has a line matching
# REGEX, read with shell builtins: a `stasis logs` per poll would take the
# CPU the restore being timed needs.
wait_file() {
  local f=$root/containers/$1/ctr.log l
  for _ in $(seq 1 30000); do
    if [ -f "$f" ]; then while IFS= read -r l; do [[ $l =~ $2 ]] && return 0; done < "$f"; fi
    sleep 0.002
  done
  echo "timed out waiting for $2 in $f" >&2; exit 1
}

# stasis
t=$(now); id=$($S run --name jvm $IMG $JAVA_ARGS); wait_file $id 'ready after'; s_cold=$(since $t)
sleep 1
t=$(now); $S checkpoint jvm --export $work/s.tar.zst >/dev/null; s_ckpt=$(since $t)
s_size=$(stat -c %s $work/s.tar.zst)
$S rm -f jvm >/dev/null
t=$(now); id=$($S restore --import $work/s.tar.zst --name jvm); wait_file $id 'tick'; s_rest=$(since $t)
$S rm -f jvm >/dev/null
t=$(now); id=$($S restore --import $work/s.tar.zst --name jvm --lazy-pages); wait_file $id 'tick'; s_lazy=$(since $t)
$S rm -f jvm >/dev/null

# Podman, same image, same program
# runc for both: the runtime is not what is compared.
podman() { command podman --runtime runc "$@"; }
t=$(now); podman run -d --name jvm-bench --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 $IMG $JAVA_ARGS >/dev/null
wait_log jvm-bench 'ready after'; p_cold=$(since $t)
sleep 1
t=$(now); podman container checkpoint --export $work/p.tar.zst jvm-bench >/dev/null; p_ckpt=$(since $t)
p_size=$(stat -c %s $work/p.tar.zst)
podman rm -f jvm-bench >/dev/null
t=$(now); podman container restore --import $work/p.tar.zst --name jvm-bench >/dev/null; wait_log jvm-bench 'tick'; p_rest=$(since $t)

printf '\nJVM with %d MiB heap%s, %d warm-up passes, one run, same image (seconds, MiB)\n' $HEAP_MIB \
  "$([ "$RANDOM_HEAP" != 0 ] && echo ' of random bytes')" $WARM_PASSES
printf '%-28s %10s %10s %8s\n' "" stasis podman ratio
printf '%-28s %10.3f %10.3f %8.2f\n' "cold start to ready" $s_cold $p_cold $(echo "$s_cold/$p_cold" | bc -l)
printf '%-28s %10.3f %10.3f %8.2f\n' "checkpoint (export)" $s_ckpt $p_ckpt $(echo "$s_ckpt/$p_ckpt" | bc -l)
printf '%-28s %10.1f %10.1f %8.2f\n' "archive size" $(echo "$s_size/1048576" | bc -l) $(echo "$p_size/1048576" | bc -l) $(echo "$s_size/$p_size" | bc -l)
printf '%-28s %10.3f %10.3f %8.2f\n' "restore to first tick" $s_rest $p_rest $(echo "$s_rest/$p_rest" | bc -l)
printf '%-28s %10.3f %10s %8.2f\n' "  same, --lazy-pages" $s_lazy "" $(echo "$s_lazy/$p_rest" | bc -l)
printf '%-28s %10.1fx %9.1fx\n' "cold start / restore" $(echo "$s_cold/$s_rest" | bc -l) $(echo "$p_cold/$p_rest" | bc -l)
printf '%-28s %10.1fx\n' "  same, --lazy-pages" $(echo "$s_cold/$s_lazy" | bc -l)
printf '\ntargets: checkpoint ratio <= 0.50, restore ratio <= 0.25, stasis cold/restore >= 5x\n'
