#!/usr/bin/env bash
# Prepares the appliance test (qemu/tests/appliance.rs): installs the host tools (idempotent) and
# builds the static k3rs that goes into the image. Called from tests/run.sh before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-appliance-deps.sh
echo "== build static k3rs for the appliance image"
start=$(date +%s)
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet -p k3rs --target x86_64-unknown-linux-gnu
echo "static k3rs: $(stat -c %s target/x86_64-unknown-linux-gnu/release/k3rs) bytes, built in $(( $(date +%s) - start ))s"
