#!/usr/bin/env bash
# Prepares the appliance tests (qemu/tests/appliance.rs): installs the host tools (idempotent) and
# builds the static k3rs binaries that go into the images. Called from tests/run.sh before
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-appliance-deps.sh

# build_static TARGET: a static, non-PIE k3rs for TARGET (extra environment, such as a cross
# linker, comes from the caller). libseccomp-sys links libseccomp.so unless told otherwise, and
# a crt-static build with one shared library silently comes out dynamic: ask for libseccomp.a
# (libseccomp-dev of the target's architecture).
build_static() {
  local target=$1 triplet=${1/-unknown-/-}
  echo "== build static k3rs for $target"
  local start
  start=$(date +%s)
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/$triplet \
    RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
    cargo build --release --quiet -p k3rs --target "$target"
  local bin=target/$target/release/k3rs
  # PID 1 in the image has no dynamic loader or shared libraries.
  if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "prepare-appliance: $bin is dynamically linked; the appliance needs a static binary" >&2
    exit 1
  fi
  echo "static k3rs ($target): $(stat -c %s "$bin") bytes, built in $(( $(date +%s) - start ))s"
}

build_static x86_64-unknown-linux-gnu

# The static aarch64 k3rs for the arm64 boards (board-configs/arm64-uefi.toml, rpi3.toml,
# rpi4.toml; qemu/tests/appliance.rs boots them under `-M virt` and `-M raspi3b`): a cross build
# of the whole node, about as long as the x86_64 one. K3RS_APPLIANCE_ARM64=0 skips it; so does a
# machine where the Rust target or the cross toolchain cannot be fetched (the arm64 tests then
# skip with a message naming the missing binary).
if [ "${K3RS_APPLIANCE_ARM64:-1}" != 0 ]; then
  ok=1
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq || ok=0
  fi
  # The cross C compiler (bundled SQLite, ring) and libseccomp.a for arm64 are Debian packages;
  # kernel, tools and boot files for the images come through the image builder's own apt.
  pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev:arm64)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ $ok = 1 ] && [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || ok=0
  fi
  if [ $ok = 1 ] && ! rustup target add aarch64-unknown-linux-gnu; then
    ok=0
  fi
  if [ $ok = 0 ]; then
    echo "prepare-appliance: the aarch64 target or cross toolchain could not be fetched; the arm64 image tests will skip" >&2
  else
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
      AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
      build_static aarch64-unknown-linux-gnu
  fi
fi
