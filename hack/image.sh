#!/usr/bin/env bash
# Builds the rootfs of the stasis image config/default runs (as a tar,
# argument 1): busybox, the static /stasis, /stasis-runc and
# /stasis-controller, and /usr/local/bin/runc and /usr/local/bin/criu, which
# run the host's runc and CRIU in the host's mount namespace (the agent
# DaemonSet has hostPID): CRIU must be the node's, built for its kernel, and
# must see the host's cgroup mounts.
# Import it into any builder or runtime as an image (e.g. `ctr images import`
# of an image made with `stasis image import`).
set -euo pipefail
out=${1:?usage: image.sh OUT.tar}
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
rf=$(mktemp -d /var/tmp/stasis-image.XXXXXX)
trap 'rm -rf "$rf"' EXIT
mkdir -p $rf/bin $rf/usr/local/bin $rf/tmp $rf/proc $rf/sys $rf/dev $rf/etc $rf/host
chmod 1777 $rf/tmp
cp /bin/busybox $rf/bin/busybox
for a in sh cat cp mv mkdir echo nsenter ls; do ln -s busybox $rf/bin/$a; done
for c in stasis stasis-runc stasis-controller; do
  CGO_ENABLED=0 go build -trimpath -o $rf/$c ./cmd/$c
done
for b in runc criu; do
  printf '#!/bin/sh\n# The host'"'"'s %s, in the host'"'"'s mount namespace (hostPID: that of PID 1, or of\n# $STASIS_HOST_PID where PID 1 may not be entered), with the host'"'"'s PATH.\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin exec nsenter -t "${STASIS_HOST_PID:-1}" -m -- %s "$@"\n' $b $b > $rf/usr/local/bin/$b
  chmod 755 $rf/usr/local/bin/$b
done
echo 'nonroot:x:65532:65532::/:/bin/sh' > $rf/etc/passwd
tar -C $rf -cf "$out" .
