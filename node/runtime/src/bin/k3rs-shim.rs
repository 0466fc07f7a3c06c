//! Standalone shim binary (the same code as `k3rs shim`), for tests and the benchmark.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(k3rs_runtime::shim::main(&args));
}
