#!/usr/bin/env bash
# Installs the host tools the appliance image builder and QEMU test need (idempotent).
# Debian bookworm packages; see shared/appliance-facts.md.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils cpio gdisk dosfstools mtools e2fsprogs erofs-utils squashfs-tools
      kmod xz-utils ovmf nftables qemu-system-arm)
# Two rounds: installing a newer qemu-system-* can remove an older qemu-utils (seen here), which
# the second round puts back.
export DEBIAN_FRONTEND=noninteractive
updated=
for round in 1 2; do
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && break
  echo "install-appliance-deps: installing ${missing[*]}"
  [ -n "$updated" ] || { apt-get update -qq; updated=1; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
