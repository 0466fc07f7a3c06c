//! `k3rs-bench`: starts the real `k3rs server` on a free loopback port in a temporary data dir,
//! measures start time, memory, API latency and throughput, watch delivery, database size and
//! idle disk writes, prints a report with targets, then stops the server and cleans up.
//!
//! ```text
//! cargo build --release -p k3rs
//! cargo run --release -p k3rs-e2e --bin k3rs-bench -- [--objects N] [--watchers N] [--idle-seconds S]
//! ```
//!
//! Targets are reported as PASS/MISS; a miss does not fail the run (the exit code is non-zero
//! only when the bench itself could not run).

#[path = "../bench/mod.rs"]
mod bench;

use anyhow::{bail, Context, Result};
use bench::http::{Client, Credentials};
use bench::load;
use bench::server::{db_files, Io, Memory, Server};
use bench::stats::{bytes, mib, ms, verdict, Samples};
use clap::Parser;
use k3rs_e2e::release_binary;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PAGE_SIZE: usize = 500;
const WATCH_INTERVAL: Duration = Duration::from_millis(10);
const SETTLE: Duration = Duration::from_secs(5);

const TARGET_READY: Duration = Duration::from_millis(500);
const TARGET_RSS: u64 = 40 * 1024 * 1024;
const TARGET_MUTATE_P99: Duration = Duration::from_millis(20);
const TARGET_IDLE_WRITES_PER_HOUR: f64 = 1024.0 * 1024.0;

/// The API server's numbers: start → ready, idle RSS and disk writes, 10,000-object latencies,
/// watch delivery. Environment: K3RS_BENCH_LOG sets the server's RUST_LOG (default info).
#[derive(Parser)]
#[command(name = "k3rs-bench")]
struct Args {
    /// k3rs binary: the release build by default.
    #[arg(long, env = "K3RS_BIN", default_value_os_t = release_binary())]
    k3rs: PathBuf,
    /// ConfigMaps to create.
    #[arg(long, default_value_t = 10000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    objects: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Length of each idle disk-write window in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_seconds: u64,
    /// Sequential samples per GET/UPDATE/CREATE/DELETE.
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    samples: usize,
    /// Requests in flight during the bulk create.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    /// HTTP/2 connections for the bulk create.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    connections: usize,
    /// Updates observed by the watchers.
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    watch_updates: usize,
    /// Cold starts to time.
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    starts: usize,
}

/// The report, printed at the end (and, partially, on failure).
#[derive(Default)]
struct Report {
    text: String,
    targets: Vec<(String, String, String, bool)>,
}

impl Report {
    fn section(&mut self, title: &str) {
        let _ = writeln!(self.text, "\n## {title}");
        eprintln!("k3rs-bench: {title}");
    }

    fn line(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(self.text, "  {}", s.as_ref());
    }

    fn target(&mut self, what: &str, measured: String, limit: &str, pass: bool) {
        self.line(format!(
            "{what}: {measured}  (target {limit}: {})",
            verdict(pass)
        ));
        self.targets
            .push((what.to_string(), measured, limit.to_string(), pass));
    }

    fn print(&self) {
        if self.text.is_empty() {
            return;
        }
        println!("{}", self.text);
        if self.targets.is_empty() {
            return;
        }
        println!("\n## Targets");
        let w = self.targets.iter().map(|t| t.0.len()).max().unwrap_or(0);
        for (what, measured, limit, pass) in &self.targets {
            println!(
                "  {what:<w$}  {measured:>14}  target {limit:<12} {}",
                verdict(*pass)
            );
        }
        let missed = self.targets.iter().filter(|t| !t.3).count();
        println!(
            "\n  {} of {} targets met{}",
            self.targets.len() - missed,
            self.targets.len(),
            if missed > 0 {
                " (misses are reported, not fatal)"
            } else {
                ""
            }
        );
    }
}

/// `/proc/loadavg`'s 1/5/15-minute averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn rss_line(label: &str, m: &Memory) -> String {
    format!(
        "{label}: VmRSS {}  (anon {}, file {}; peak VmHWM {}; {} threads)",
        mib(m.rss),
        mib(m.anon),
        mib(m.file),
        mib(m.peak_rss),
        m.threads
    )
}

/// What the server wrote during an idle window.
struct Idle {
    seconds: u64,
    io: Io,
    /// (second of the window, write_bytes in that second) for every second with writes.
    active: Vec<(u64, u64)>,
    log: Vec<String>,
}

/// Sleeps `seconds` with no client activity, sampling `/proc/<pid>/io` every second.
async fn idle_window(server: &mut Server, seconds: u64) -> Result<Idle> {
    let before = server.io()?;
    let lines_before = server.log.lines();
    let mut last = before;
    let mut active = Vec::new();
    for second in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.check_alive()?;
        let now = server.io()?;
        let written = now.delta(&last).write_bytes;
        if written > 0 {
            active.push((second, written));
        }
        last = now;
    }
    Ok(Idle {
        seconds,
        io: last.delta(&before),
        active,
        log: server.log.since(lines_before),
    })
}

fn report_idle(report: &mut Report, label: &str, idle: &Idle) {
    let io = &idle.io;
    let per_hour = io.write_bytes as f64 * 3600.0 / idle.seconds as f64;
    report.line(format!(
        "window {} s: write_bytes {}  wchar {}  rchar {}  write syscalls {}  cancelled_write_bytes {}",
        idle.seconds,
        bytes(io.write_bytes),
        bytes(io.wchar),
        bytes(io.rchar),
        io.syscw,
        bytes(io.cancelled_write_bytes)
    ));
    if !idle.active.is_empty() {
        let shown: Vec<String> = idle
            .active
            .iter()
            .take(12)
            .map(|(s, b)| format!("{s}s:{}", bytes(*b)))
            .collect();
        report.line(format!(
            "write_bytes grew in {} of {} one-second samples: {}{}",
            idle.active.len(),
            idle.seconds,
            shown.join(" "),
            if idle.active.len() > 12 { " …" } else { "" }
        ));
        let late: u64 = idle
            .active
            .iter()
            .filter(|(s, _)| *s >= 10)
            .map(|a| a.1)
            .sum();
        if idle.seconds > 20 {
            report.line(format!(
                "excluding the first 10 s: {} → {}/h",
                bytes(late),
                bytes((late as f64 * 3600.0 / (idle.seconds - 10) as f64) as u64)
            ));
        }
    }
    report.line(format!(
        "server log lines in the window: {} (stderr goes to a pipe, not to disk)",
        idle.log.len()
    ));
    for l in idle.log.iter().take(5) {
        report.line(format!("    | {l}"));
    }
    report.target(
        &format!("idle disk writes, {label}"),
        format!("{}/h", bytes(per_hour as u64)),
        "< 1 MiB/h",
        per_hour < TARGET_IDLE_WRITES_PER_HOUR,
    );
}

fn report_db(report: &mut Report, label: &str, data_dir: &Path) -> u64 {
    let files = db_files(data_dir);
    let total: u64 = files.iter().map(|f| f.1).sum();
    let parts: Vec<String> = files
        .iter()
        .map(|(n, s)| format!("{n} {}", bytes(*s)))
        .collect();
    report.line(format!(
        "{label}: {} total  ({})",
        bytes(total),
        parts.join(", ")
    ));
    total
}

/// A failed phase is first explained by a dead server, if it died (with its last log lines).
fn alive_or<T>(server: &mut Server, r: Result<T>) -> Result<T> {
    if r.is_err() {
        server.check_alive()?;
    }
    r
}

fn latency_line(report: &mut Report, label: &str, phase: &load::Phase) -> Samples {
    let s = phase.samples();
    report.line(format!("{label:<16} {}{}", s.summary(), phase.error_note()));
    s
}

async fn run(args: &Args, report: &mut Report) -> Result<()> {
    let bin = &args.k3rs;
    if !bin.is_file() {
        bail!(
            "k3rs binary not found at {} — build it first with `cargo build --release -p k3rs`, or pass --k3rs PATH",
            bin.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("k3rs-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let _ = writeln!(
        report.text,
        "# k3rs bench\n  binary: {} ({})\n  data under: {}\n  host: {} CPUs; client and server share them; load average at start: {}\n  load: {} ConfigMaps, {} watchers, {} sequential samples, idle windows of {} s",
        bin.display(),
        std::fs::metadata(bin).map(|m| bytes(m.len())).unwrap_or_default(),
        tmp.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        args.objects,
        args.watchers,
        args.samples,
        args.idle_seconds
    );

    // 1. Cold starts, each in a fresh data dir; the last one stays up for the rest.
    report.section(&format!(
        "1. Start to ready: exec → /readyz \"ok\" over HTTPS, {} cold starts in fresh data dirs",
        args.starts
    ));
    let mut ready = Vec::new();
    let mut shutdowns = Vec::new();
    let mut server = None;
    for i in 0..args.starts {
        let dir = tmp.path().join(format!("start-{i}"));
        std::fs::create_dir_all(&dir)?;
        let mut s = Server::spawn(bin, &dir)?;
        ready.push(s.wait_ready().await?);
        if i + 1 == args.starts {
            server = Some(s);
        } else {
            shutdowns.push(s.stop().await?);
        }
    }
    let mut server = server.context("no server started")?;
    let ready_samples = Samples::new(ready.clone());
    report.line(format!(
        "runs: {}",
        ready.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    ));
    report.line(format!(
        "median {}  max {}",
        ms(ready_samples.pct(50.0)),
        ms(ready_samples.max())
    ));
    if !shutdowns.is_empty() {
        let graceful = shutdowns
            .iter()
            .filter(|(_, st)| st.is_some_and(|s| s.success()))
            .count();
        let worst = shutdowns.iter().map(|s| s.0).max().unwrap_or_default();
        report.line(format!(
            "SIGTERM → exit: {graceful}/{} clean exits, slowest {}",
            shutdowns.len(),
            ms(worst)
        ));
    }
    report.target(
        "ready after exec (median)",
        ms(ready_samples.pct(50.0)),
        "< 500 ms",
        ready_samples.pct(50.0) < TARGET_READY,
    );
    report.target(
        "ready after exec (max)",
        ms(ready_samples.max()),
        "< 500 ms",
        ready_samples.max() < TARGET_READY,
    );

    // 2a. Idle memory and idle writes before any load.
    report.section("2. Idle memory right after ready (no load)");
    let mem_ready = server.memory()?;
    report.line(rss_line("after ready", &mem_ready));
    report.target(
        "idle RSS after ready",
        mib(mem_ready.rss),
        "< 40 MiB",
        mem_ready.rss < TARGET_RSS,
    );

    report.section(&format!(
        "6a. Idle disk writes right after start (before load), {} s with no client activity",
        args.idle_seconds
    ));
    let idle = idle_window(&mut server, args.idle_seconds).await?;
    report_idle(report, "before load", &idle);
    let mem_idle = server.memory()?;
    report.line(rss_line("RSS at the end of the window", &mem_idle));

    // 3. Load.
    let creds = Credentials::from_kubeconfig(&server.kubeconfig)?;
    let client = Client::new(server.addr, &creds)?;
    let conn = client.connect().await?;
    alive_or(&mut server, load::create_namespace(&conn).await)?;

    report.section(&format!(
        "3. {} ConfigMaps (~100 B of data each) in namespace {}",
        args.objects,
        load::NS
    ));
    let created =
        load::create_bulk(&client, args.objects, args.concurrency, args.connections).await;
    let created = alive_or(&mut server, created)?;
    server.check_alive()?;
    let rate = created.objects.len() as f64 / created.elapsed.as_secs_f64();
    report.line(format!(
        "CREATE bulk: {} objects in {:.2} s = {:.0} objects/s ({} requests in flight over {} HTTP/2 connection(s)){}",
        created.objects.len(),
        created.elapsed.as_secs_f64(),
        rate,
        args.concurrency,
        args.connections,
        created.phase.error_note()
    ));
    let bulk = created.phase.samples();
    report.line(format!(
        "CREATE bulk per-request latency (includes queueing at {} in flight): {}",
        args.concurrency,
        bulk.summary()
    ));
    for e in created.phase.first_errors.iter().skip(1) {
        report.line(format!("    error: {e}"));
    }
    let mut objects = created.objects;
    let mut names: Vec<String> = objects.keys().cloned().collect();
    names.sort();
    if names.is_empty() {
        bail!("no object was created");
    }

    report.line(
        "sequential requests, one at a time over one HTTP/2 connection (latency without queueing):",
    );
    let get = load::get_sequential(&conn, &names, args.samples).await;
    let get = alive_or(&mut server, get)?;
    latency_line(report, "GET", &get);
    let pages_per_list = names.len().div_ceil(PAGE_SIZE);
    let min_lists = 20;
    let listed =
        load::list_sequential(&conn, PAGE_SIZE, names.len(), args.samples, min_lists).await;
    let listed = alive_or(&mut server, listed)?;
    latency_line(report, &format!("LIST page ({PAGE_SIZE})"), &listed.pages);
    latency_line(
        report,
        &format!("LIST full ({pages_per_list}p)"),
        &listed.full,
    );
    if listed.by_page.len() > 1 {
        let n = listed.by_page.len();
        let shown: Vec<String> = [0, n / 2, n - 1]
            .iter()
            .map(|&i| {
                let s = Samples::new(listed.by_page[i].clone());
                format!("page {} p50 {}", i + 1, ms(s.pct(50.0)))
            })
            .collect();
        report.line(format!("  by position: {}", shown.join(", ")));
    }
    if let Some(items) = listed.items_per_list.first() {
        report.line(format!(
            "  each full list: {items} items in {pages_per_list} pages ({} created by the bench)",
            names.len()
        ));
    }
    let update = load::update_sequential(&conn, &mut objects, &names, args.samples).await;
    let update = alive_or(&mut server, update)?;
    let update_s = latency_line(report, "UPDATE (PUT)", &update);
    let seq = load::create_delete_sequential(&conn, args.samples).await;
    let (create_seq, delete_seq) = alive_or(&mut server, seq)?;
    let create_s = latency_line(report, "CREATE", &create_seq);
    let delete_s = latency_line(report, "DELETE", &delete_seq);
    server.check_alive()?;
    for (label, s) in [
        ("UPDATE", &update_s),
        ("CREATE", &create_s),
        ("DELETE", &delete_s),
    ] {
        let over = s.above(TARGET_MUTATE_P99);
        if over > 0 {
            report.line(format!(
                "{label}: {over} of {} samples above {} (slowest {})",
                s.len(),
                ms(TARGET_MUTATE_P99),
                ms(s.max())
            ));
        }
        report.target(
            &format!("{label} p99 (sequential)"),
            ms(s.pct(99.0)),
            "< 20 ms",
            s.pct(99.0) < TARGET_MUTATE_P99,
        );
    }

    // 4. Watch delivery.
    if args.watchers > 0 {
        report.section(&format!(
            "4. Watch delivery: {} watchers (one HTTP/2 connection each), {} updates {} apart",
            args.watchers,
            args.watch_updates,
            ms(WATCH_INTERVAL)
        ));
        let w = load::watch_delivery(
            &client,
            &conn,
            args.watchers,
            args.watch_updates,
            WATCH_INTERVAL,
        )
        .await;
        let w = alive_or(&mut server, w)?;
        report.line(format!("{} watches opened in {}", w.watchers, ms(w.setup)));
        latency_line(report, "probe UPDATE", &w.updates);
        report.line(format!(
            "delivery (receive − send) {}",
            w.delivery.summary()
        ));
        report.line(format!(
            "deliveries: {} of {} expected ({} updates × {} watchers); missing {}, duplicates {}, out of order {}; {}/{} watchers got every event",
            w.delivery.len(),
            w.expected,
            w.updates_sent - w.updates.errors as usize,
            w.watchers,
            w.missing,
            w.duplicates,
            w.out_of_order,
            w.watchers_complete,
            w.watchers
        ));
        for e in w.watch_errors.iter().take(5) {
            report.line(format!("    watch error: {e}"));
        }
        report.target(
            "watch events missing",
            w.missing.to_string(),
            "= 0",
            w.missing == 0,
        );
    }

    // 2b/5. Memory and database after the load.
    report.section("2b. Memory after the load");
    let mem_load = server.memory()?;
    report.line(rss_line("right after the load", &mem_load));

    report.section("5. Database size on disk");
    report_db(report, "after the load", &server.data_dir);

    report.section(&format!(
        "6b. Idle disk writes after the load ({} s settle, then {} s with no client activity)",
        SETTLE.as_secs(),
        args.idle_seconds
    ));
    drop(conn);
    tokio::time::sleep(SETTLE).await;
    server.check_alive()?;
    let idle = idle_window(&mut server, args.idle_seconds).await?;
    report_idle(report, "after load", &idle);
    let mem_after = server.memory()?;
    report.line(rss_line("RSS at the end of the window", &mem_after));
    report.target(
        "idle RSS after the load",
        mib(mem_after.rss),
        "< 40 MiB",
        mem_after.rss < TARGET_RSS,
    );
    report_db(
        report,
        "database at the end of the window",
        &server.data_dir,
    );

    // Extra: restart on the loaded data dir.
    report.section(&format!(
        "7. Restart with the loaded database ({} objects)",
        names.len()
    ));
    let (took, status) = server.stop().await?;
    report.line(format!(
        "SIGTERM → exit in {} ({})",
        ms(took),
        status.map_or("killed after 10 s".into(), |s| s.to_string())
    ));
    let dir = server
        .data_dir
        .parent()
        .context("data dir has no parent")?
        .to_path_buf();
    let mut warm = Server::spawn(bin, &dir)?;
    let t = warm.wait_ready().await?;
    report.line(format!("exec → ready: {}", ms(t)));
    report.line(rss_line("after ready", &warm.memory()?));
    tokio::time::sleep(SETTLE).await;
    warm.check_alive()?;
    report.line(rss_line(
        &format!("{} s after ready", SETTLE.as_secs()),
        &warm.memory()?,
    ));
    warm.stop().await?;
    let _ = writeln!(
        report.text,
        "\n  load average at the end (other work on the host skews latency): {}",
        loadavg()
    );
    drop(tmp);
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let mut report = Report::default();
    // On Ctrl-C the run is dropped, which kills the server and removes the temporary files.
    let result = tokio::select! {
        r = run(&args, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    report.print();
    match result {
        Ok(()) => {
            println!(
                "\n  bench finished in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nk3rs-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
