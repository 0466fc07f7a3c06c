#!/usr/bin/env bash
# Prepares the appliance test (qemu/tests/appliance.rs): installs the host tools (idempotent) and
# builds the static k3rs that goes into the image. Called from tests/run.sh before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-appliance-deps.sh
echo "== build static k3rs for the appliance image"
start=$(date +%s)
# libseccomp-sys links libseccomp.so unless told otherwise, and a crt-static build with one
# shared library silently comes out dynamic: ask for libseccomp.a (libseccomp-dev).
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
  cargo build --release --quiet -p k3rs --target x86_64-unknown-linux-gnu
bin=target/x86_64-unknown-linux-gnu/release/k3rs
# PID 1 in the image has no dynamic loader or shared libraries.
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
  echo "prepare-appliance: $bin is dynamically linked; the appliance needs a static binary" >&2
  exit 1
fi
echo "static k3rs: $(stat -c %s "$bin") bytes, built in $(( $(date +%s) - start ))s"

# Opt-in: the static aarch64 k3rs for board-configs/arm64-uefi.toml (qemu/tests/appliance.rs
# arm64_image_boots_under_qemu_virt with K3RS_TEST_ARM64=1). A cross build of the whole node.
if [ "${K3RS_APPLIANCE_ARM64:-}" = 1 ]; then
  echo "== build static aarch64 k3rs"
  start=$(date +%s)
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev:arm64 systemd-boot-efi:arm64
        qemu-system-arm qemu-efi-aarch64)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  rustup target add aarch64-unknown-linux-gnu
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/aarch64-linux-gnu \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
    cargo build --release --quiet -p k3rs --target aarch64-unknown-linux-gnu
  bin=target/aarch64-unknown-linux-gnu/release/k3rs
  if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "prepare-appliance: $bin is dynamically linked" >&2
    exit 1
  fi
  echo "static aarch64 k3rs: $(stat -c %s "$bin") bytes, built in $(( $(date +%s) - start ))s"
fi
