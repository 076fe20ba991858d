#!/usr/bin/env bash
# Installs what stasis needs on a Debian 12 machine, as root: runc, iptables,
# busybox-static, zstd, podman (a peer the tests compare against), docker-registry
# (the registry the tests start), etcd-server (under the API server the tests
# start), containernetworking-plugins (pod networking on the test cluster's
# node), libseccomp-dev (to build CRI-O) and CRIU >= 4.1.
# Idempotent: each step is skipped when what it installs is already there.
set -euo pipefail

log() { printf '[deps] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "hack/deps.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin:$PATH

# Runtime packages and CRIU's build dependencies. podman is installed without
# recommends so that Debian's CRIU 3.17 (broken on kernels >= 6.13) is not pulled in.
pkgs=(runc iptables busybox-static zstd tar xz-utils ca-certificates podman
      uidmap fuse-overlayfs conmon docker-registry etcd-server containernetworking-plugins iproute2
      gcc make pkg-config libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
      libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
      python3-protobuf dpkg-dev patch libseccomp-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# stasis' own CRIU build carries the patches in hack/criu-patches (fixes for
# kernels newer than the release); a stamp says which were applied.
patches=$(dirname "$0")/criu-patches
stamp=/usr/local/sbin/.criu-stasis-patches
want_stamp=$(cat "$patches"/*.patch 2>/dev/null | sha256sum | cut -d' ' -f1)

criu_ok() {
  command -v criu >/dev/null 2>&1 || return 1
  local v; v=$(criu --version 2>/dev/null | awk '/^Version:/{print $2}')
  case "$v" in 3.*|2.*|1.*|"") return 1 ;; esac
  if [ "$(command -v criu)" = /usr/local/sbin/criu ] && [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
    return 1
  fi
  criu check >/dev/null 2>&1
}

if ! criu_ok; then
  # Debian 12 ships CRIU 3.17, which fails on this kernel; build trixie's 4.1.x
  # from source fetched through apt, which verifies signature and checksum.
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -n "$uri" ] || { echo "no Debian URI in /etc/apt/sources.list.d/debian.sources" >&2; exit 1; }
  src=/etc/apt/sources.list.d/stasis-trixie-src.sources
  if [ ! -f "$src" ]; then
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$src"
    apt-get update -qq
  fi
  work=$(mktemp -d /var/tmp/stasis-criu.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  log "fetching CRIU source through apt"
  (cd "$work" && apt-get source --tar-only --download-only criu >/dev/null 2>&1) ||
    (apt-get update -qq && cd "$work" && apt-get source --tar-only --download-only criu >/dev/null)
  tarball=$(ls "$work"/criu_*.orig.tar.* | head -1)
  tar -C "$work" -xf "$tarball"
  dir=$(find "$work" -maxdepth 1 -type d -name 'criu-*' | head -1)
  for p in "$patches"/*.patch; do
    [ -e "$p" ] || continue
    log "applying $(basename "$p")"
    patch -d "$dir" -p1 -s < "$p"
  done
  log "building CRIU in $dir"
  make -C "$dir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
  install -m 0755 "$dir/criu/criu" /usr/local/sbin/criu
  echo "$want_stamp" > "$stamp"
  criu_ok || { criu check >&2; echo "CRIU built but 'criu check' fails" >&2; exit 1; }
fi
log "criu $(criu --version | awk '/^Version:/{print $2}'), $(runc --version | head -1)"
