#!/usr/bin/env bash
# Benchmark: checkpoint and restore of memory that does not compress, at
# several sizes, side by side in one run: raw runc and CRIU into and from
# tmpfs (the floor on this machine), Podman 4.3, and stasis (eager and
# lazy, from an exported file, from the store, and from a registry the
# script starts: a checkpoint image the store lacks, read by range
# requests). The process (hack/memhog)
# holds N MiB of random bytes and ticks 50 times a second. Prints, per size:
# checkpoint (the container stops) and restore to its first tick after the
# restore, and for lazy restores when every page is in. Needs root and
# hack/deps.sh. SIZES="64 512 1024 2048" (MiB) by default. The floor of a
# checkpoint is raw CRIU's dump plus writing the archive's bytes to disk
# with sync: the script measures the second with dd.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH
SIZES=${SIZES:-64 512 1024 2048}
CGO_ENABLED=0 go build -o bin/stasis ./cmd/stasis

work=$(mktemp -d /var/tmp/stasis-bench-scale.XXXXXX)
shm=$(mktemp -d /dev/shm/stasis-bench-scale.XXXXXX)
root=$work/stasis-root run=/run/stasis-bench-scale-$$ rr=/run/stasis-bench-scale-runc-$$
S="bin/stasis --root $root --runroot $run"
IMG=localhost/stasis-bench-memhog:1
cleanup() {
  $S rm -f mem >/dev/null 2>&1 || true
  stop_registry $work/registry
  runc --root $rr delete -f raw >/dev/null 2>&1 || true
  podman rm -f mem-bench >/dev/null 2>&1 || true
  podman rmi -f $IMG >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work" "$shm" "$run" "$rr"
}
. hack/lib/bench.sh # before the trap: cleanup calls stop_registry
trap cleanup EXIT

# The image: the memhog binary alone.
mkdir -p $work/rootfs/tmp $work/rootfs/proc $work/rootfs/sys $work/rootfs/dev
CGO_ENABLED=0 go build -o $work/rootfs/memhog ./hack/memhog
tar -C $work/rootfs -cf $work/memhog.tar .
$S image import $work/memhog.tar $IMG >/dev/null
podman import -q $work/memhog.tar $IMG >/dev/null
# runc's own bundle for the floor: its default spec, the same program.
mkdir -p $work/bundle && cp -a $work/rootfs $work/bundle/rootfs
(cd $work/bundle && runc spec)

REG=$(start_registry $work/registry)
# runc for Podman too: the runtime is not what is compared.
podman() { command podman --runtime runc "$@"; }
last_tick() { grep -o 'tick [0-9]*' | tail -1 | cut -d' ' -f2; }
# wait_tick LOGCOMMAND AFTER: until the process prints a tick past AFTER.
wait_tick() {
  for _ in $(seq 1 12000); do
    n=$(eval "$1" 2>/dev/null | last_tick || true)
    [ -n "$n" ] && [ "$n" -gt "$2" ] && return 0
    sleep 0.005
  done
  echo "timed out waiting for a tick past $2 ($1)" >&2; exit 1
}
wait_ready() { # LOGCOMMAND
  for _ in $(seq 1 6000); do eval "$1" 2>/dev/null | grep -q tick && return 0; sleep 0.01; done
  echo "timed out waiting for ready ($1)" >&2; exit 1
}
# wait_gone PIDFILE [HWMFILE]: until the lazy-pages server named there has
# exited; its largest RSS (kB, the helper alone: CRIU's lazy-pages daemon is
# its child) goes to HWMFILE.
wait_gone() {
  local pid hwm=0 k h; pid=$(cat "$1" 2>/dev/null || true)
  [ -z "$pid" ] && return 0
  # Builtins only: a fork per poll would load the cores being measured.
  while kill -0 "$pid" 2>/dev/null; do
    while read -r k h _; do [ "$k" = VmHWM: ] && hwm=$h; done < /proc/$pid/status 2>/dev/null || true
    sleep 0.005
  done
  [ -n "${2:-}" ] && echo $hwm > "$2"
  return 0
}

declare -A R
for mib in $SIZES; do
  # raw runc + CRIU, images on tmpfs
  python3 - $work/bundle/config.json $mib <<'PY'
import json, sys
p, mib = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["process"]["args"] = ["/memhog", mib, "/tmp/ticks"]
c["process"]["terminal"] = False
c["root"]["readonly"] = False
json.dump(c, open(p, "w"))
PY
  log=$work/bundle/rootfs/tmp/ticks; : > $log
  runc --root $rr run -d --bundle $work/bundle raw >/dev/null 2>&1
  wait_ready "cat $log"; sleep 0.5
  at=$(last_tick < $log)
  # --leave-running: how long CRIU keeps the tasks frozen (into tmpfs)
  t=$(now); runc --root $rr checkpoint --leave-running --image-path $shm/raw --work-path $shm/raw-work raw; R[raw_frz_$mib]=$(since $t)
  rm -rf $shm/raw $shm/raw-work
  t=$(now); runc --root $rr checkpoint --image-path $shm/raw --work-path $shm/raw-work raw; R[raw_ck_$mib]=$(since $t)
  t=$(now); runc --root $rr restore -d --bundle $work/bundle --image-path $shm/raw --work-path $shm/raw-work raw >/dev/null
  wait_tick "cat $log" $at; R[raw_rs_$mib]=$(since $t)
  runc --root $rr delete -f raw 2>/dev/null || true; rm -rf $shm/raw $shm/raw-work

  # Podman
  podman run -d --name mem-bench --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 $IMG /memhog $mib >/dev/null
  wait_ready "podman logs mem-bench"; sleep 0.5
  at=$(podman logs mem-bench 2>/dev/null | last_tick)
  t=$(now); podman container checkpoint --export $work/p.tar.zst mem-bench >/dev/null; R[p_ck_$mib]=$(since $t)
  podman rm -f mem-bench >/dev/null
  t=$(now); podman container restore --import $work/p.tar.zst --name mem-bench >/dev/null
  wait_tick "podman logs mem-bench" $at; R[p_rs_$mib]=$(since $t)
  podman rm -f mem-bench >/dev/null; rm -f $work/p.tar.zst

  # stasis: export, restore eager and lazy from the file
  $S run --name mem $IMG /memhog $mib >/dev/null
  wait_ready "$S logs mem"; sleep 0.5
  at=$($S logs mem | last_tick)
  # /usr/bin/time: the largest RSS of stasis and what it waited for (runc, CRIU).
  t=$(now); /usr/bin/time -f %M -o $work/rss-ck-$mib $S checkpoint mem --export $work/s.tar.zst --print-stats > $work/ck-$mib.json
  R[s_ck_$mib]=$(since $t)
  R[s_size_$mib]=$(stat -c %s $work/s.tar.zst)
  # The disk's part of the floor: the archive's bytes written and synced.
  cp $work/s.tar.zst $shm/floor
  t=$(now); dd if=$shm/floor of=$work/floor bs=4M conv=fsync status=none; R[disk_$mib]=$(since $t)
  rm -f $shm/floor $work/floor
  R[floor_$mib]=$(echo "${R[raw_ck_$mib]} + ${R[disk_$mib]}" | bc)
  $S rm -f mem >/dev/null
  t=$(now); /usr/bin/time -f %M -o $work/rss-rs-$mib $S restore --import $work/s.tar.zst --name mem --print-stats > $work/rs-$mib.json
  wait_tick "$S logs mem" $at; R[s_rs_$mib]=$(since $t)
  $S rm -f mem >/dev/null
  t=$(now); $S restore --import $work/s.tar.zst --name mem --lazy-pages --print-stats > $work/lz-$mib.json
  wait_tick "$S logs mem" $at; R[s_lz_$mib]=$(since $t)
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' $work/lz-$mib.json)
  wait_gone $run/containers/$id/lazy-pages.pid $work/rss-lz-$mib; R[s_lzall_$mib]=$(since $t)
  $S rm -f mem >/dev/null; rm -f $work/s.tar.zst*

  # stasis: into the store, restored in place, lazily
  $S run --name mem $IMG /memhog $mib >/dev/null
  wait_ready "$S logs mem"; sleep 0.5
  at=$($S logs mem | last_tick)
  # --leave-running: frozen from the freeze to the thaw (its phases)
  $S checkpoint mem --leave-running --print-stats > $work/lr-$mib.json
  R[s_frz_$mib]=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["phases_us"]; print(sum(p.get(k,0) for k in ("freeze","dump","rootfs"))/1e6)' $work/lr-$mib.json)
  sync # its writes must not be the next checkpoint's to wait for
  t=$(now); $S checkpoint mem >/dev/null; R[s_cks_$mib]=$(since $t)
  t=$(now); id=$($S restore mem --lazy-pages)
  wait_tick "$S logs mem" $at; R[s_lzs_$mib]=$(since $t)
  wait_gone $run/containers/$id/lazy-pages.pid; R[s_lzsall_$mib]=$(since $t)
  $S rm -f mem >/dev/null

  # stasis: a checkpoint image in the registry only, restored lazily from it
  ref=$REG/bench/mem:$mib
  $S run --name mem $IMG /memhog $mib >/dev/null
  wait_ready "$S logs mem"; sleep 0.5
  at=$($S logs mem | last_tick)
  $S checkpoint mem --create-image $ref --push --tls-verify=false >/dev/null
  $S rm -f mem >/dev/null; $S rmi $ref >/dev/null
  t=$(now); $S restore $ref --name mem --lazy-pages --tls-verify=false --print-stats > $work/lzr-$mib.json
  wait_tick "$S logs mem" $at; R[s_lzr_$mib]=$(since $t)
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' $work/lzr-$mib.json)
  wait_gone $run/containers/$id/lazy-pages.pid $work/rss-lzr-$mib; R[s_lzrall_$mib]=$(since $t)
  $S rm -f mem >/dev/null; $S rmi $ref >/dev/null
done

printf '\nIncompressible memory (random bytes), one run (seconds)\n'
printf '%-40s' ""; for mib in $SIZES; do printf '%10s' "${mib} MiB"; done; echo
row() { # label key [ratio-to-key]
  printf '%-40s' "$1"
  for mib in $SIZES; do
    v=${R[${2}_$mib]}
    if [ -n "${3:-}" ]; then printf '%10.2f' "$(echo "$v/${R[${3}_$mib]}" | bc -l)"; else printf '%10.2f' "$v"; fi
  done; echo
}
row "raw runc checkpoint (tmpfs)" raw_ck
row "Podman checkpoint (export)" p_ck
row "stasis checkpoint (export)" s_ck
row "stasis checkpoint (store)" s_cks
row "  stasis export / Podman" s_ck p_ck
row "  stasis export / raw runc" s_ck raw_ck
row "floor: raw checkpoint + dd with fsync" floor
row "  stasis export / floor" s_ck floor
row "raw runc --leave-running (frozen)" raw_frz
row "stasis --leave-running, frozen" s_frz
row "  stasis frozen / raw runc" s_frz raw_frz
row "raw runc restore (tmpfs), first tick" raw_rs
row "Podman restore, first tick" p_rs
row "stasis restore, first tick" s_rs
row "stasis --lazy-pages (file), first tick" s_lz
row "  same, every page in" s_lzall
row "stasis --lazy-pages (store), first tick" s_lzs
row "  same, every page in" s_lzsall
row "stasis --lazy-pages (registry), 1st tick" s_lzr
row "  same, every page in and image stored" s_lzrall
first=${SIZES%% *}
flat() { # label key: each size against the smallest
  printf '%-40s' "$1"
  for mib in $SIZES; do printf '%10.2f' "$(echo "${R[${2}_$mib]}/${R[${2}_$first]}" | bc -l)"; done; echo
}
flat "  lazy (file) first tick / smallest's" s_lz
flat "  lazy (store) first tick / smallest's" s_lzs
flat "  lazy (registry) 1st tick / smallest's" s_lzr
row "  stasis eager / Podman" s_rs p_rs
row "  stasis eager / raw runc" s_rs raw_rs
for k in ck rs lz lzr; do
  case $k in ck) what=checkpoint;; rs) what=restore;; lz) what="lazy-pages helper";; lzr) what="helper (registry)";; esac
  printf '%-40s' "stasis $what, max RSS (MiB)"
  for mib in $SIZES; do printf '%10.0f' "$(echo "$(cat $work/rss-$k-$mib)/1024" | bc -l)"; done; echo
done
printf '%-40s' "stasis archive (MiB)"; for mib in $SIZES; do printf '%10.0f' "$(echo "${R[s_size_$mib]}/1048576" | bc -l)"; done; echo
# Where stasis' time goes (its own phases, --print-stats), in seconds.
python3 - "$work" $SIZES <<'PY'
import json, sys
work, sizes = sys.argv[1], sys.argv[2:]
for kind, prefix, keys in (("checkpoint", "ck", ["dump", "stop", "rootfs", "archive", "compress", "write"]),
                           ("restore", "rs", ["extract", "prepare", "rootfs", "criu_restore"]),
                           ("lazy restore", "lz", ["extract", "prepare", "rootfs", "lazy_pages", "criu_restore"]),
                           ("lazy restore from the registry", "lzr", ["resolve", "extract", "prepare", "rootfs", "lazy_pages", "criu_restore"])):
    print("\nstasis %s phases (export/import)" % kind)
    print("%-40s" % "" + "".join("%10s" % (s + " MiB") for s in sizes))
    ph = [json.load(open("%s/%s-%s.json" % (work, prefix, s)))["phases_us"] for s in sizes]
    for k in keys:
        print("%-40s" % ("  " + k) + "".join("%10.2f" % (p.get(k, 0) / 1e6) for p in ph))
PY
printf '\ntargets (issue 14): lazy first tick <= 0.15 s at every size, flat (largest <= 1.2x smallest);\n'
printf 'eager <= 1.3x raw, <= 0.3x Podman; checkpoint <= 0.5x Podman and <= 1.2x the floor; frozen <= 1.2x raw;\n'
printf 'helpers under 64 MiB RSS\n'
