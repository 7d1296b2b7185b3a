#!/usr/bin/env bash
# Debian packages hosttune uses, for running or for the test tiers. Installs only what is missing; needs root.
# Usage: scripts/install-system-deps.sh run    what running needs (make run)
#        scripts/install-system-deps.sh test   that plus what the test tiers need (make test; the default)
# run:  numactl: memory binding for the worker (without it the worker binds with bindexec, CPUs only).
# test: iproute2/util-linux: network namespaces for net.* sysctl tests and the Ansible fleet; procps, kmod;
#       prometheus: the real server and promtool the operator pack's tests run (monitoring/; tier `prometheus`).
# The real-systemd tier's own needs (debootstrap, systemd-container) are installed by scripts/build-rootfs.sh.
set -euo pipefail
FOR=${1:-test}
case "$FOR" in
  run) PKGS=(numactl) ;;
  test) PKGS=(numactl iproute2 util-linux procps kmod prometheus) ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
PKGS+=(${HOSTTUNE_EXTRA_DEBS:-})
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "note: missing Debian packages ${missing[*]} (not root: not installing; what needs them will skip)" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# The tests run prometheus as a plain process on a loopback port; Debian's package would also enable and start
# prometheus.service (listening on :9090 on every address) and prometheus-node-exporter. Masked before the
# install where systemd runs, so installing the test tools starts no server on this machine.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  systemctl mask --quiet prometheus.service prometheus-node-exporter.service
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
