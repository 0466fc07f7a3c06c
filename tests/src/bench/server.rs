//! The `k3rs server` process under test: start, readiness, `/proc` numbers, stop. The guard
//! kills the process when dropped, so no error path leaves a server behind.

use super::http::{Probe, ReadyProbe};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Server log lines kept for error reports.
const LOG_TAIL: usize = 200;
/// Longest a start may take before the bench gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between `/readyz` polls when nothing is listening yet.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The server's stderr, drained by a thread into memory (so log output is not written to the
/// disk being measured) and counted.
#[derive(Default)]
pub struct Log {
    tail: Mutex<VecDeque<String>>,
    lines: AtomicU64,
}

impl Log {
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    pub fn tail(&self, n: usize) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let skip = tail.len().saturating_sub(n);
        tail.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines after the first `from`.
    pub fn since(&self, from: u64) -> Vec<String> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.lines();
        let n = usize::try_from(total.saturating_sub(from)).unwrap_or(usize::MAX);
        let skip = tail.len().saturating_sub(n);
        tail.iter().skip(skip).cloned().collect()
    }
}

pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub addr: SocketAddr,
    pub log: Arc<Log>,
    started: Instant,
}

impl Server {
    /// Execs `k3rs server` with its state in `dir` (created fresh by the caller).
    pub fn spawn(bin: &Path, dir: &Path) -> Result<Server> {
        let port = free_port()?;
        let data_dir = dir.join("data");
        let kubeconfig = dir.join("kubeconfig.yaml");
        let started = Instant::now();
        let mut child = Command::new(bin)
            .arg("server")
            .arg("--config=/dev/null")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--https-listen-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--node-ip=127.0.0.1")
            .arg(format!("--write-kubeconfig={}", kubeconfig.display()))
            .arg("--disable-agent")
            .env(
                "RUST_LOG",
                std::env::var("K3RS_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Log::default());
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut tail = log.tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == LOG_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                    log.lines.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(Server {
            child: Some(child),
            data_dir,
            kubeconfig,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            started,
        })
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("the server is not running")
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the server is not running");
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "k3rs server exited unexpectedly ({status}); last log lines:\n{}",
                self.log.tail(40)
            );
        }
        Ok(())
    }

    /// Polls `/readyz` over HTTPS until it answers `ok`; returns the time since exec.
    pub async fn wait_ready(&mut self) -> Result<Duration> {
        let probe = ReadyProbe::new(self.addr)?;
        let deadline = self.started + READY_TIMEOUT;
        let mut last = String::from("nothing listening");
        loop {
            self.check_alive()?;
            match probe.probe(Duration::from_secs(5)).await {
                Probe::Ready => break,
                Probe::Refused => {}
                Probe::NotReady(why) => last = why,
            }
            if Instant::now() > deadline {
                bail!(
                    "k3rs server not ready after {READY_TIMEOUT:?} (last: {last}); log:\n{}",
                    self.log.tail(40)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let elapsed = self.started.elapsed();
        // The kubeconfig is written before serving starts, so it exists once ready.
        if !self.kubeconfig.exists() {
            bail!(
                "server is ready but {} is missing",
                self.kubeconfig.display()
            );
        }
        Ok(elapsed)
    }

    pub fn memory(&self) -> Result<Memory> {
        Memory::read(self.pid()?)
    }

    pub fn io(&self) -> Result<Io> {
        Io::read(self.pid()?)
    }

    /// SIGTERM, then wait up to 10 s (SIGKILL after that). Returns how long the exit took and
    /// the exit status (`None`: it had to be killed).
    pub async fn stop(&mut self) -> Result<(Duration, Option<std::process::ExitStatus>)> {
        let t = Instant::now();
        let child = self.child.as_mut().context("the server is not running")?;
        if child.try_wait()?.is_none() {
            // The child is not reaped yet, so its pid cannot have been reused.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        while t.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Ok((t.elapsed(), Some(status)));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok((t.elapsed(), None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// From `/proc/<pid>/status`, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss: u64,
    pub peak_rss: u64,
    /// Anonymous (heap, stacks) and file-backed (the binary's pages) parts of the RSS.
    pub anon: u64,
    pub file: u64,
    pub threads: u64,
}

impl Memory {
    fn read(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kb = |k: &str| proc_field(&text, k).with_context(|| format!("{path} has no {k}"));
        Ok(Memory {
            rss: kb("VmRSS")? * 1024,
            peak_rss: kb("VmHWM")? * 1024,
            anon: kb("RssAnon")? * 1024,
            file: kb("RssFile")? * 1024,
            threads: proc_field(&text, "Threads").unwrap_or(0),
        })
    }
}

/// From `/proc/<pid>/io`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    pub rchar: u64,
    pub wchar: u64,
    pub syscw: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

impl Io {
    fn read(pid: u32) -> Result<Io> {
        let path = format!("/proc/{pid}/io");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let f = |k: &str| proc_field(&text, k).with_context(|| format!("{path} has no {k}"));
        Ok(Io {
            rchar: f("rchar")?,
            wchar: f("wchar")?,
            syscw: f("syscw")?,
            write_bytes: f("write_bytes")?,
            cancelled_write_bytes: f("cancelled_write_bytes")?,
        })
    }

    pub fn delta(&self, before: &Io) -> Io {
        Io {
            rchar: self.rchar.saturating_sub(before.rchar),
            wchar: self.wchar.saturating_sub(before.wchar),
            syscw: self.syscw.saturating_sub(before.syscw),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            cancelled_write_bytes: self
                .cancelled_write_bytes
                .saturating_sub(before.cancelled_write_bytes),
        }
    }
}

/// Sizes of the SQLite files under `DATA/server/db/`.
pub fn db_files(data_dir: &Path) -> Vec<(String, u64)> {
    let db = data_dir.join("server").join("db");
    ["state.db", "state.db-wal", "state.db-shm"]
        .iter()
        .map(|name| {
            let size = std::fs::metadata(db.join(name))
                .map(|m| m.len())
                .unwrap_or(0);
            (name.to_string(), size)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_fields() {
        let status = "Name:\tk3rs\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(proc_field(status, "VmRSS"), Some(10240));
        assert_eq!(proc_field(status, "VmHWM"), Some(20480));
        assert_eq!(proc_field(status, "VmSwap"), None);
        let io = "rchar: 5\nwchar: 7\nwrite_bytes: 4096\n";
        assert_eq!(proc_field(io, "write_bytes"), Some(4096));
    }
}
