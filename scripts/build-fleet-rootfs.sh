#!/usr/bin/env bash
# Build, once, the rootfs the Ansible tier's test fleet boots: the systemd test rootfs (scripts/build-rootfs.sh)
# plus an SSH server, so each nspawn'ed host is a real systemd Debian that Ansible reaches over real SSH.
#
# Why derived from the systemd rootfs rather than a second debootstrap: one definition of the base system, and
# the derived tree is keyed on the base tree's name, so a change to the base rebuilds this one too.
# Idempotent and cached like the base (a .hosttune-rootfs-complete mark; a half-built tree is rebuilt).
#
# Usage: scripts/build-fleet-rootfs.sh       prints the fleet rootfs path on stdout
# Env:   HOSTTUNE_CACHE (default ~/.cache/hosttune)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(openssh-server)
FORMAT=1
CACHE=${HOSTTUNE_CACHE:-$HOME/.cache/hosttune}

if [ "$(id -u)" != 0 ]; then
  echo "note: not root: not building the fleet rootfs (the ansible tier will skip)" >&2
  exit 0
fi
BASE=$(scripts/build-rootfs.sh)
[ -n "$BASE" ] && [ -x "$BASE/usr/lib/systemd/systemd" ] || { echo "error: no base rootfs from build-rootfs.sh" >&2; exit 1; }

KEY=$(printf '%s\n' "$(basename "$BASE")" "${PACKAGES[*]}" "$FORMAT" | sha256sum | cut -c1-12)
ROOTFS="$CACHE/fleet-rootfs/$KEY"
MARK="$ROOTFS/.hosttune-rootfs-complete"
if [ -f "$MARK" ]; then
  echo "$ROOTFS"
  exit 0
fi

rm -rf "$ROOTFS" "$ROOTFS.tmp"
mkdir -p "$CACHE/fleet-rootfs"
echo "building $ROOTFS: $BASE + ${PACKAGES[*]}" >&2
cp -a "$BASE" "$ROOTFS.tmp"
rm -f "$ROOTFS.tmp/.hosttune-rootfs-complete"
cp /etc/resolv.conf "$ROOTFS.tmp/etc/resolv.conf"
# Packages installed in a chroot must not start their services on the build machine.
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS.tmp/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS.tmp/usr/sbin/policy-rc.d"
export DEBIAN_FRONTEND=noninteractive
chroot "$ROOTFS.tmp" apt-get update -qq >&2
chroot "$ROOTFS.tmp" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2
rm -f "$ROOTFS.tmp/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS.tmp/var/cache/apt/archives/"*.deb "$ROOTFS.tmp/var/lib/apt/lists/"* || true
# Key-only root login; a host key pair is baked in (fine for throwaway test hosts on private namespaces).
mkdir -p "$ROOTFS.tmp/etc/ssh/sshd_config.d"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
  > "$ROOTFS.tmp/etc/ssh/sshd_config.d/hosttune-fleet.conf"

mv "$ROOTFS.tmp" "$ROOTFS"
date -u +%FT%TZ > "$MARK"
echo "$ROOTFS"
