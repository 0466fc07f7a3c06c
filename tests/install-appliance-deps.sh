#!/usr/bin/env bash
# Installs the host tools the appliance image builder and QEMU test need (idempotent).
# Debian bookworm packages; see shared/appliance-facts.md.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils cpio gdisk dosfstools mtools e2fsprogs erofs-utils squashfs-tools
      kmod xz-utils ovmf nftables qemu-system-arm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-appliance-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
