//! The appliance's log file: PID 1's own lines and the node daemon's stdout/stderr, appended to
//! `<data>/logs/k3rs.log` and rotated by size (`k3rs.log.1` … `.N`).
//!
//! Writing to the file never holds anything up: lines go through a bounded channel to one writer
//! thread, and a line that does not fit (channel full, disk full, file gone) is dropped and
//! counted; the count is written into the file once it can be written again. Nothing here panics.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Where the log goes, relative to the data directory.
pub const LOG_FILE: &str = "logs/k3rs.log";
/// Size at which the file is rotated.
pub const MAX_BYTES: u64 = 10 << 20;
/// Rotated files kept (`k3rs.log.1` is the newest).
pub const KEEP: u32 = 3;
/// Lines waiting for the writer thread; beyond this they are dropped.
const QUEUE_LINES: usize = 1024;
/// Longer lines are cut into pieces of this size, so the queue's memory stays bounded.
const MAX_LINE: usize = 4096;

/// A file appended to and rotated by size. Errors are returned, never panicked on; after a
/// failed write the file is reopened on the next one.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> Self {
        RotatingFile {
            path,
            max_bytes,
            keep,
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn open(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    /// `k3rs.log.{keep-1}` → `.{keep}`, …, `k3rs.log` → `.1`, and a fresh `k3rs.log`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            File::create(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.open()
    }

    /// Appends `data`, rotating first when it would take the file past the limit.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let result = (|| {
            if self.file.is_none() {
                self.open()?;
            }
            if self.size > 0 && self.size + data.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            let f = self.file.as_mut().ok_or(io::ErrorKind::NotFound)?;
            f.write_all(data)?;
            self.size += data.len() as u64;
            Ok(())
        })();
        if result.is_err() {
            self.file = None;
        }
        result
    }

    /// Closes the file (so its filesystem can be unmounted); the next write opens it again.
    pub fn close(&mut self) {
        self.file = None;
    }
}

enum Msg {
    Line(Vec<u8>),
    /// Close the file and acknowledge; nothing is written after it.
    Close(SyncSender<()>),
}

/// The sending side of the writer thread.
struct Sink {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    closed: AtomicBool,
}

impl Sink {
    fn send(&self, line: &[u8]) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        for piece in line.chunks(MAX_LINE) {
            match self.tx.try_send(Msg::Line(piece.to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// PID 1's lines from before the data partition is mounted (config errors, module failures),
/// written at the head of the file when it starts; `None` once started.
static EARLY: Mutex<Option<Vec<u8>>> = Mutex::new(Some(Vec::new()));
/// Beyond this, early lines reach the console only.
const EARLY_MAX: usize = 256 << 10;

fn keep_early(line: &[u8]) {
    let mut early = EARLY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(buf) = early.as_mut() {
        if buf.len() + line.len() <= EARLY_MAX {
            buf.extend_from_slice(line);
        }
    }
}

/// The writer thread: writes each line, and before it how many were dropped since the last
/// successful write.
fn write_loop(rx: Receiver<Msg>, mut file: RotatingFile, dropped: Arc<AtomicU64>) {
    let mut reported = 0u64;
    let mut failing = false;
    let mut closed = false;
    while let Ok(msg) = rx.recv() {
        let line = match msg {
            Msg::Line(l) if !closed => l,
            Msg::Line(_) => continue,
            Msg::Close(ack) => {
                file.close();
                closed = true;
                let _ = ack.try_send(());
                continue;
            }
        };
        let total = dropped.load(Ordering::Relaxed);
        if total > reported {
            let note = format!(
                "k3rs-init: {} log lines dropped (queue full or log file not writable)\n",
                total - reported
            );
            if file.write(note.as_bytes()).is_ok() {
                reported = total;
            }
        }
        match file.write(&line) {
            Ok(()) if failing => {
                failing = false;
                let _ = writeln!(io::stderr(), "k3rs-init: log file writable again");
            }
            Ok(()) => {}
            Err(e) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    failing = true;
                    let _ = writeln!(
                        io::stderr(),
                        "k3rs-init: writing the log file failed: {e}; dropping lines until it works"
                    );
                }
            }
        }
    }
}

/// Starts writing to `path` (its directory is created). Only the first call takes effect.
pub fn start(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = RotatingFile::new(path.to_path_buf(), MAX_BYTES, KEEP);
    // Opened here so that a path that cannot work is reported now, not line by line.
    file.open()?;
    let early = EARLY.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(early) = early.filter(|e| !e.is_empty()) {
        let _ = file.write(&early);
    }
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    std::thread::Builder::new()
        .name("logfile".into())
        .spawn(move || write_loop(rx, file, counter))?;
    let _ = SINK.set(Sink {
        tx,
        dropped,
        closed: AtomicBool::new(false),
    });
    Ok(())
}

/// There will be no file (no data partition): the early lines are let go.
pub fn discard_early() {
    EARLY.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Whether lines are going to the file.
pub fn active() -> bool {
    SINK.get()
        .is_some_and(|s| !s.closed.load(Ordering::Relaxed))
}

/// Queues one line (or several) for the file; a no-op before [`start`] and after [`stop`].
pub fn send(line: &[u8]) {
    if let Some(s) = SINK.get() {
        s.send(line);
    }
}

/// Closes the file so the data partition can be unmounted; later lines go to the console only.
/// Waits at most `max` for the writer to finish what it has.
pub fn stop(max: Duration) {
    let Some(s) = SINK.get() else {
        return;
    };
    if s.closed.swap(true, Ordering::Relaxed) {
        return;
    }
    let (ack_tx, ack_rx) = sync_channel(1);
    let start = std::time::Instant::now();
    let mut msg = Msg::Close(ack_tx);
    loop {
        match s.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if start.elapsed() < max => {
                msg = m;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
    let _ = ack_rx.recv_timeout(max.saturating_sub(start.elapsed()));
}

/// A `tracing` writer for PID 1: each formatted event goes to stderr (the console) and to the
/// file (kept in memory until the file is started, up to a limit).
pub struct ConsoleAndFile;

impl Write for ConsoleAndFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        if SINK.get().is_some() {
            send(buf);
        } else {
            keep_early(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Copies what the node daemon writes into `pipe` to the console as it comes and to the file
/// line by line, until every writer has closed it (the daemon's children, such as container
/// shims, keep it open after the daemon itself is gone, and must never block on it).
pub fn pump(pipe: OwnedFd, console: &mut dyn Write) {
    pump_to(pipe, console, &mut send)
}

fn pump_to(pipe: OwnedFd, console: &mut dyn Write, line_out: &mut dyn FnMut(&[u8])) {
    let mut send = |line: &[u8]| line.chunks(MAX_LINE).for_each(&mut *line_out);
    let mut pipe = File::from(pipe);
    let mut buf = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let _ = console.write_all(chunk);
        pending.extend_from_slice(chunk);
        let mut from = 0;
        while let Some(i) = pending
            .get(from..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
        {
            send(pending.get(from..=from + i).unwrap_or_default());
            from += i + 1;
        }
        pending.drain(..from);
        if pending.len() >= MAX_LINE {
            send(&pending);
            pending.clear();
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        send(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k3rs.log");
        let mut f = RotatingFile::new(path.clone(), 20, 3);
        // Ten-byte lines: two per file.
        for i in 0..11 {
            f.write(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        let rot = |n: u32| dir.path().join(format!("k3rs.log.{n}"));
        assert_eq!(read(&path), "line 010\n");
        assert_eq!(read(&rot(1)), "line 008\nline 009\n");
        assert_eq!(read(&rot(2)), "line 006\nline 007\n");
        assert_eq!(read(&rot(3)), "line 004\nline 005\n");
        assert!(!rot(4).exists());
    }

    #[test]
    fn continues_an_existing_file_and_takes_an_oversized_line_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k3rs.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = RotatingFile::new(path.clone(), 10, 1);
        f.write(b"new\n").unwrap();
        assert_eq!(read(&path), "old\nnew\n");
        f.write(b"a line longer than the limit\n").unwrap();
        assert_eq!(read(&path), "a line longer than the limit\n");
        assert_eq!(read(&dir.path().join("k3rs.log.1")), "old\nnew\n");
        f.write(b"x\n").unwrap();
        assert_eq!(read(&path), "x\n");
        assert!(!dir.path().join("k3rs.log.2").exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_until_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let path = logs.join("k3rs.log");
        let mut f = RotatingFile::new(path.clone(), 1 << 20, 3);
        assert!(f.write(b"lost\n").is_err());
        std::fs::create_dir(&logs).unwrap();
        f.write(b"two\n").unwrap();
        assert_eq!(read(&path), "two\n");
    }

    #[test]
    fn full_disk_drops_and_counts_lines_then_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k3rs.log");
        // /dev/full: every write fails with ENOSPC, as on a full data partition.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let (tx, rx) = sync_channel(16);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let writer = std::thread::spawn({
            let path = path.clone();
            move || write_loop(rx, RotatingFile::new(path, 1 << 20, 3), counter)
        });
        for i in 0..3 {
            tx.send(Msg::Line(format!("{i}\n").into_bytes())).unwrap();
        }
        let (ack_tx, ack_rx) = sync_channel(1);
        tx.send(Msg::Close(ack_tx)).unwrap();
        ack_rx.recv().unwrap();
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        drop(tx);
        writer.join().unwrap();

        // Space again: the next line is preceded by the count of what was lost.
        std::fs::remove_file(&path).unwrap();
        let (tx, rx) = sync_channel(16);
        let counter = dropped.clone();
        let writer = std::thread::spawn({
            let path = path.clone();
            move || write_loop(rx, RotatingFile::new(path, 1 << 20, 3), counter)
        });
        tx.send(Msg::Line(b"back\n".to_vec())).unwrap();
        drop(tx);
        writer.join().unwrap();
        assert_eq!(
            read(&path),
            "k3rs-init: 3 log lines dropped (queue full or log file not writable)\nback\n"
        );
    }

    /// The only test of the process-wide sink: early lines first, then queued ones, nothing
    /// after `stop`.
    #[test]
    fn start_writes_early_lines_then_queued_ones_and_stop_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        ConsoleAndFile.write_all(b"early\n").unwrap();
        assert!(!active());
        start(&path).unwrap();
        assert!(active());
        ConsoleAndFile.write_all(b"pid1\n").unwrap();
        send(b"daemon\n");
        stop(Duration::from_secs(5));
        assert!(!active());
        send(b"after stop\n");
        assert_eq!(read(&path), "early\npid1\ndaemon\n");
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let (tx, rx) = sync_channel(2);
        let sink = Sink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
        };
        for _ in 0..5 {
            sink.send(b"x\n");
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        drop(rx);
        sink.send(b"y\n");
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn pump_copies_to_the_console_and_lines_to_the_file() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let long = "y".repeat(MAX_LINE + 10);
        let input = format!("first\nsecond\n{long}\npartial");
        let writer = std::thread::spawn({
            let input = input.clone();
            move || File::from(w).write_all(input.as_bytes()).unwrap()
        });
        let mut console = Vec::new();
        let mut lines = Vec::new();
        pump_to(r, &mut console, &mut |l| {
            lines.push(String::from_utf8_lossy(l).into_owned())
        });
        writer.join().unwrap();
        assert_eq!(console, input.as_bytes());
        assert_eq!(lines.first().map(String::as_str), Some("first\n"));
        assert_eq!(lines.get(1).map(String::as_str), Some("second\n"));
        assert_eq!(lines.last().map(String::as_str), Some("partial\n"));
        // Every byte reaches the file, long lines in pieces of at most MAX_LINE.
        assert_eq!(lines.concat(), format!("{input}\n"));
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
    }
}
