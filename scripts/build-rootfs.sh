#!/usr/bin/env bash
# Build, once, the cached Debian rootfs that the real-systemd test tier boots with systemd-nspawn.
#
# Why a cache: debootstrap takes about 1.5 min; the tests boot a throwaway overlay of the cached tree in ~0.3 s,
# so the cache itself is never written by a test. The directory name is a key of everything that shapes the tree
# (suite, variant, package list, this script's format version): change any and a new tree is built next to the old.
#
# Idempotent: an existing complete tree (marked by .hosttune-rootfs-complete) is reused; a half-built one (an
# interrupted run) is removed and rebuilt. Needs root; without root it says so and exits 0 (the tier skips).
#
# Usage: scripts/build-rootfs.sh            prints the rootfs path on stdout
# Env:   HOSTTUNE_CACHE (default ~/.cache/hosttune), HOSTTUNE_DEBIAN_MIRROR (default: the host's apt mirror).
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,procps
FORMAT=1
CACHE=${HOSTTUNE_CACHE:-$HOME/.cache/hosttune}
KEY=$(printf '%s\n' "$SUITE" "$VARIANT" "$INCLUDE" "$FORMAT" | sha256sum | cut -c1-12)
ROOTFS="$CACHE/rootfs/$SUITE-$KEY"
MARK="$ROOTFS/.hosttune-rootfs-complete"

if [ -f "$MARK" ]; then
  echo "$ROOTFS"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "note: not root: not building the systemd test rootfs (the systemd tier will skip)" >&2
  exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mirror=${HOSTTUNE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # Use the mirror the host's apt already reaches (deb822 sources first, then the classic list).
  mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
             /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list \
                                 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

# A partial tree from an interrupted run is not trusted.
rm -rf "$ROOTFS" "$ROOTFS.tmp"
mkdir -p "$CACHE/rootfs"
echo "building $ROOTFS from $mirror (debootstrap $VARIANT $SUITE, about 1.5 min)" >&2
debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$ROOTFS.tmp" "$mirror" >&2

# Boot-time settings for a quiet, fast container: no getty on the pipe console, a machine id made at boot.
rm -f "$ROOTFS.tmp/etc/machine-id"
: > "$ROOTFS.tmp/etc/machine-id"
rm -rf "$ROOTFS.tmp/var/cache/apt/archives/"*.deb "$ROOTFS.tmp/var/lib/apt/lists/"* || true

mv "$ROOTFS.tmp" "$ROOTFS"
date -u +%FT%TZ > "$MARK"
echo "$ROOTFS"
