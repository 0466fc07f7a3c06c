//! Links `k3rs` as a position-dependent executable on Linux. Every container shim is a `k3rs`
//! process; in a PIE the loader relocates ~2 MiB of `.data.rel.ro` at each start, which turns
//! those pages into private copies (most of a shim's memory) and costs start-up time. Without
//! PIE the addresses are fixed at link time and the pages stay shared with the file.
//! Static (`crt-static`) builds get the same with `-C relocation-model=static`
//! (tests/prepare-appliance.sh), since rustc links them with `-static-pie` otherwise.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let static_crt = features.split(',').any(|f| f == "crt-static");
    if os == "linux" && !static_crt {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
