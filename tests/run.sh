#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and end-to-end tests of the real binary
# driven by the real kubectl. Installs what it needs (idempotent). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

need_kubectl() {
  if [ ! -x /usr/bin/kubectl ] || [ ! -x /usr/lib/google-cloud-sdk/bin/kubectl.1.27 ]; then
    echo "tests: kubectl 1.27-1.33 are expected at /usr/bin/kubectl and /usr/lib/google-cloud-sdk/bin/kubectl.1.NN" >&2
    exit 1
  fi
}
need_kubectl
export CARGO_TERM_COLOR=never

# First: building k3rs links libseccomp (libseccomp-dev), and the tests use the rest.
echo "== runtime test dependencies"
bash tests/install-runtime-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== build k3rs"
cargo build -p k3rs --quiet

echo "== appliance: host tools and the static k3rs"
bash tests/prepare-appliance.sh

echo "== cargo test"
# End-to-end tests each start their own server on a free port, so they can run in parallel.
cargo test --workspace --quiet -- --test-threads=4
