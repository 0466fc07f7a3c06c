//! Throughput of the shim's CRI log writing: container output (100-byte lines in 64 KiB reads,
//! as the shim's pipe reads deliver them) into a plain append-only file — what the shim did
//! before rotation — and into rotating logs of several sizes.
//! `cargo run --release -p k3rs-runtime --bin log-bench [-- <MiB per run>]`

use k3rs_runtime::crilog::{CriLogWriter, LogRotation, RecordSink, RotatingLog, Stream};
use std::fs::OpenOptions;
use std::path::Path;
use std::time::Instant;

fn run<W: RecordSink>(label: &str, out: W, total: usize, dir: &Path) {
    let line = format!("{}\n", "x".repeat(99));
    let chunk: Vec<u8> = line.as_bytes().repeat(64 * 1024 / line.len());
    let mut w = CriLogWriter::new(out);
    let t0 = Instant::now();
    let mut written = 0;
    while written < total {
        w.write(Stream::Stdout, &chunk).expect("writing the log");
        written += chunk.len();
    }
    let secs = t0.elapsed().as_secs_f64();
    let files = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    println!(
        "{label:<24} {:>8.1} MiB/s of output  {:>6.2} M lines/s  ({files} files left)",
        written as f64 / secs / (1 << 20) as f64,
        (written / line.len()) as f64 / secs / 1e6,
    );
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    let root = std::env::temp_dir().join(format!("k3rs-log-bench-{}", std::process::id()));
    let fresh = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("creating the bench dir");
        d
    };
    let d = fresh("plain");
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("0.log"))
        .expect("opening the log");
    run("plain file (before)", f, total, &d);
    for (label, max_size) in [
        ("rotating 10Mi x 5", 10 << 20),
        ("rotating 1Mi x 5", 1 << 20),
        ("rotating 64Ki x 5", 64 << 10),
    ] {
        let d = fresh(label.split_whitespace().nth(1).unwrap_or(label));
        let limits = LogRotation {
            max_size,
            max_files: 5,
        };
        let log = RotatingLog::open(d.join("0.log"), limits).expect("opening the log");
        run(label, log, total, &d);
    }
    let _ = std::fs::remove_dir_all(&root);
}
