#!/usr/bin/env bash
# Debian packages the test tiers and the daemon use. Installs only what is missing; needs root.
# numactl: memory binding for the worker; iproute2/util-linux: network namespaces for net.* sysctl tests.
set -euo pipefail
PKGS=(numactl iproute2 util-linux procps kmod)
PKGS+=(${HOSTTUNE_EXTRA_DEBS:-})
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "note: missing Debian packages ${missing[*]} (not root: not installing; tiers needing them will skip)" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
