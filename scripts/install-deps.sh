#!/usr/bin/env bash
# Installs, from Debian's packages, everything Spinup and its tests use:
# runc (container driver), runsc (gvisor driver), busybox-static (the `busybox` environment),
# mmdebstrap (the `debian` and `base` environments), qemu-system-x86 + qemu-utils +
# e2fsprogs (microvm driver: the VMM, qcow2 overlays, ext4 root images),
# bubblewrap and hyperfine (bench baselines), nftables + iproute2 (sandbox
# networks) and curl (network tests and bench). Idempotent. The microVM guest
# kernel is not installed here: the daemon downloads Debian's cloud kernel
# package into its data dir on first use (never into the host's /boot).
# Last, scripts/install-e2b-sdks.sh installs the E2B SDKs and
# scripts/install-python-tools.sh the Python test tools (not from Debian).
set -euo pipefail
pkgs=(runc runsc busybox-static mmdebstrap e2fsprogs bubblewrap hyperfine ca-certificates nftables iproute2 curl)
export DEBIAN_FRONTEND=noninteractive
updated=
update() { [ -n "$updated" ] || apt-get update -qq; updated=1; }
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    update
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# qemu-img must come from the same QEMU as qemu-system-x86: a newer
# backported qemu-utils "Breaks" bookworm's qemu-system-common, so pin it
# to qemu-system-x86's version (a downgrade where a backport is installed).
qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
if [ -z "$qv" ] || [ "$qv" = "(none)" ]; then
    update
    qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
fi
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed" ||
    [ "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null)" != "$qv" ]; then
    echo "installing: qemu-system-x86 qemu-utils ($qv)"
    apt-get install -y -qq --no-install-recommends --allow-downgrades "qemu-system-x86=$qv" "qemu-utils=$qv" >/dev/null
fi
# overlayfs is what every container sandbox's rootfs is made of.
grep -qw overlay /proc/filesystems || modprobe overlay
# The official E2B SDKs (Python venv + npm project, outside the repo) that
# the E2B compatibility tests drive; re-checked for new releases daily.
"$(dirname "$0")/install-e2b-sdks.sh"
"$(dirname "$0")/install-python-tools.sh"
