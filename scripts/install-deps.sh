#!/usr/bin/env bash
# Installs, from Debian's packages, everything Spinup and its tests use:
# runc (container driver), runsc (gvisor driver), busybox-static (the `busybox` environment),
# mmdebstrap (the `debian` environment), bubblewrap and hyperfine (bench
# baselines). Idempotent.
set -euo pipefail
pkgs=(runc runsc busybox-static mmdebstrap bubblewrap hyperfine ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# overlayfs is what every container sandbox's rootfs is made of.
grep -qw overlay /proc/filesystems || modprobe overlay
