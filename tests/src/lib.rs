//! End-to-end harness: starts the real `k3rs` binary and drives it with real kubectl.
