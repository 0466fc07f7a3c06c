//! Writer for the CRI container log format: `<RFC3339Nano> <stream> <F|P> <content>\n`, and
//! the rotation of the log file (the kubelet's `containerLogMaxSize` / `containerLogMaxFiles`).

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Lines longer than this are split into partial (`P`) records, like containerd (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// The stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where CRI records go: each record (one line with its newline) is written whole.
pub trait RecordSink {
    fn write_record(&mut self, record: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

impl<W: Write> RecordSink for W {
    fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        self.write_all(record)
    }
    fn flush(&mut self) -> io::Result<()> {
        Write::flush(self)
    }
}

/// Rotation limits of a container's log file, as the kubelet's `containerLogMaxSize` and
/// `containerLogMaxFiles` (K3s: `--kubelet-arg=container-log-max-size=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    /// The current file is rotated before a record would make it larger than this (bytes).
    pub max_size: u64,
    /// Files kept per container log, the current one included (at least 2, as upstream).
    pub max_files: usize,
}

impl Default for LogRotation {
    /// Upstream's defaults: 10Mi and 5 files.
    fn default() -> Self {
        LogRotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Parses a size as `--container-log-max-size` takes it: a Kubernetes quantity in bytes
/// (`10Mi`, `512Ki`, `1G`, `4096`). `None` when it is not one or is zero.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// A container's log file that rotates itself: before a record would take the file over
/// `max_size`, the file is renamed to `<name>.<YYYYMMDD-HHMMSS>` (upstream's name; `.NNNNNN` is
/// appended when that second already has one, which sorts after it), a new file is started, and the
/// oldest rotated files beyond `max_files - 1` are deleted. A record is never split across
/// files, so a reader that finishes the renamed file and then reads the new one loses and
/// duplicates nothing. Only the shim writes the file, so the size is tracked in memory.
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    /// Bytes in `file`.
    size: u64,
    /// Whole records not written yet: one `write` per [`RecordSink::flush`] (the shim flushes
    /// after each read of container output) instead of one per line.
    buf: Vec<u8>,
    limits: LogRotation,
    /// The clock for rotated names, replaceable in tests.
    stamp: fn() -> String,
}

fn rotation_stamp_now() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RotatingLog {
    /// Opens (creates or appends to) the log at `path`.
    pub fn open(path: impl Into<PathBuf>, limits: LogRotation) -> io::Result<Self> {
        let path = path.into();
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            file,
            size,
            buf: Vec::new(),
            limits: LogRotation {
                max_size: limits.max_size.max(1),
                max_files: limits.max_files.max(2),
            },
            stamp: rotation_stamp_now,
        })
    }

    /// Same, with a fixed clock for rotated names (tests).
    pub fn with_stamp(mut self, stamp: fn() -> String) -> Self {
        self.stamp = stamp;
        self
    }

    /// The rotated files of this log, oldest first.
    pub fn rotated(&self) -> Vec<PathBuf> {
        rotated_files(&self.path)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let base = self.path.as_os_str().to_string_lossy().into_owned();
        let first = format!("{base}.{}", (self.stamp)());
        let rotated = self.rotated();
        // Rotations within one second get `.000001`, `.000002`, ...: the newest rotated file
        // sorts last, so the next number follows it.
        let target = match rotated.last().map(|p| p.to_string_lossy().into_owned()) {
            Some(last) if last == first => format!("{first}.{:06}", 1),
            Some(last) => match last
                .strip_prefix(&first)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                Some(n) => format!("{first}.{:06}", n + 1),
                None => first,
            },
            None => first,
        };
        // The oldest go first (as upstream's cleanup before rotating), so there are never more
        // than `max_files` files.
        let excess = (rotated.len() + 1).saturating_sub(self.limits.max_files - 1);
        for old in &rotated[..excess.min(rotated.len())] {
            if let Err(e) = fs::remove_file(old) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        fs::rename(&self.path, &target)?;
        // From here on the old file gets nothing more: readers holding it read it to the end
        // and move on to the next one.
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The rotated files of the log at `path` (`<name>.<stamp>[.NNNNNN]`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix(&prefix)
                            .and_then(|rest| rest.as_bytes().first())
                            .is_some_and(u8::is_ascii_digit)
                    })
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

impl RecordSink for RotatingLog {
    fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        let held = self.size + self.buf.len() as u64;
        if held > 0 && held + record.len() as u64 > self.limits.max_size {
            self.flush()?;
            if let Err(e) = self.rotate() {
                // Keep logging into whatever file is open; try again after another max_size.
                // The shim's own stderr is its log.
                eprintln!("rotating {}: {e}", self.path.display());
                self.size = 0;
            }
        }
        self.buf.extend_from_slice(record);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Dropped on error too: a full disk must not make the shim's memory grow.
        let r = self.file.write_all(&self.buf);
        self.size += self.buf.len() as u64;
        self.buf.clear();
        r
    }
}

impl Drop for RotatingLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Splits each stream's bytes into lines and writes one CRI record per line.
pub struct CriLogWriter<W: RecordSink> {
    out: W,
    pending: [Vec<u8>; 2],
    now: fn() -> String,
}

fn rfc3339_nano_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl<W: RecordSink> CriLogWriter<W> {
    pub fn new(out: W) -> Self {
        Self::with_clock(out, rfc3339_nano_now)
    }

    /// A writer with a fixed clock, for tests.
    pub fn with_clock(out: W, now: fn() -> String) -> Self {
        CriLogWriter {
            out,
            pending: [Vec::new(), Vec::new()],
            now,
        }
    }

    /// Feeds bytes read from `stream`; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.pending[idx].extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    self.emit(stream, true)?;
                }
                None => {
                    self.pending[idx].extend_from_slice(data);
                    data = &[];
                }
            }
            while self.pending[idx].len() >= MAX_LINE {
                let rest = self.pending[idx].split_off(MAX_LINE);
                self.emit(stream, false)?;
                self.pending[idx] = rest;
            }
        }
        self.out.flush()
    }

    /// Writes what is left of a stream that reached EOF (a last line without newline).
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        if !self.pending[stream as usize].is_empty() {
            self.emit(stream, true)?;
        }
        self.out.flush()
    }

    fn emit(&mut self, stream: Stream, full: bool) -> io::Result<()> {
        let idx = stream as usize;
        let mut rec = Vec::with_capacity(self.pending[idx].len() + 48);
        rec.extend_from_slice((self.now)().as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_str().as_bytes());
        rec.extend_from_slice(if full { b" F " } else { b" P " });
        rec.append(&mut self.pending[idx]);
        rec.push(b'\n');
        self.out.write_record(&rec)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> String {
        "2024-01-01T00:00:00.000000001Z".into()
    }

    #[test]
    fn lines_partial_and_eof() {
        let mut w = CriLogWriter::with_clock(Vec::new(), clock);
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"ld\n\nlast").unwrap();
        w.finish(Stream::Stdout).unwrap();
        let out = String::from_utf8(w.into_inner()).unwrap();
        assert_eq!(
            out,
            "2024-01-01T00:00:00.000000001Z stdout F hello\n\
             2024-01-01T00:00:00.000000001Z stderr F err\n\
             2024-01-01T00:00:00.000000001Z stdout F world\n\
             2024-01-01T00:00:00.000000001Z stdout F \n\
             2024-01-01T00:00:00.000000001Z stdout F last\n"
        );
    }

    #[test]
    fn long_lines_are_split() {
        let mut w = CriLogWriter::with_clock(Vec::new(), clock);
        let long = vec![b'x'; MAX_LINE + 10];
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        let out = String::from_utf8(w.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(" stdout P "));
        assert!(lines[1].ends_with(" stdout F xxxxxxxxxx"));
    }

    /// Writes `n` numbered lines of varying length through a rotating log in odd-sized chunks
    /// (so lines straddle reads) and returns the log's path.
    fn write_numbered(dir: &Path, limits: LogRotation, n: usize) -> PathBuf {
        let path = dir.join("0.log");
        let log = RotatingLog::open(&path, limits)
            .unwrap()
            .with_stamp(|| "20240101-120000".into());
        let mut w = CriLogWriter::with_clock(log, clock);
        let mut text = Vec::new();
        for i in 0..n {
            text.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 97)).as_bytes());
        }
        for chunk in text.chunks(333) {
            w.write(Stream::Stdout, chunk).unwrap();
        }
        w.finish(Stream::Stdout).unwrap();
        path
    }

    /// The contents of each line of the rotated files then the current one, checking that every
    /// record is whole and each file within `max_size`.
    fn read_all(path: &Path, max_size: u64) -> (usize, Vec<String>) {
        let mut files = rotated_files(path);
        files.push(path.to_path_buf());
        let mut lines = Vec::new();
        for f in &files {
            let text = fs::read_to_string(f).unwrap();
            assert!(
                text.len() as u64 <= max_size,
                "{} has {} bytes",
                f.display(),
                text.len()
            );
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{} ends mid-record",
                f.display()
            );
            for l in text.lines() {
                let (head, content) = l.split_once(" stdout F ").expect("a whole F record");
                assert_eq!(head, clock());
                lines.push(content.to_string());
            }
        }
        (files.len(), lines)
    }

    #[test]
    fn rotation_loses_and_splits_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogRotation {
            max_size: 1024,
            max_files: 100_000,
        };
        let n = 5000;
        let path = write_numbered(dir.path(), limits, n);
        let (files, lines) = read_all(&path, limits.max_size);
        assert!(files > 300, "only {files} files");
        assert_eq!(lines.len(), n);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("line {i} {}", "x".repeat(i % 97)));
        }
        // Every rotation fell in the same (fixed) second: numbered in order after the first.
        let rotated = rotated_files(&path);
        assert!(rotated[0].ends_with("0.log.20240101-120000"));
        assert!(rotated[1].ends_with("0.log.20240101-120000.000001"));
        assert!(rotated[files - 2].ends_with(format!("0.log.20240101-120000.{:06}", files - 2)));
    }

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogRotation {
            max_size: 2048,
            max_files: 3,
        };
        let n = 3000;
        let path = write_numbered(dir.path(), limits, n);
        let all: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(all.len(), 3, "{all:?}");
        let (files, lines) = read_all(&path, limits.max_size);
        assert_eq!(files, 3);
        // What is left is the newest lines, contiguous up to the last one.
        let first: usize = lines[0].split(' ').nth(1).unwrap().parse().unwrap();
        assert!(first > 0);
        assert_eq!(lines.len(), n - first);
        for (k, l) in lines.iter().enumerate() {
            let i = first + k;
            assert_eq!(*l, format!("line {i} {}", "x".repeat(i % 97)));
        }
    }

    #[test]
    fn reopening_appends_and_counts_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        fs::write(&path, "x".repeat(900)).unwrap();
        let limits = LogRotation {
            max_size: 1000,
            max_files: 2,
        };
        let mut log = RotatingLog::open(&path, limits).unwrap();
        log.write_record(&[b'y'; 99]).unwrap();
        log.flush().unwrap();
        assert!(log.rotated().is_empty());
        assert_eq!(fs::read(&path).unwrap().len(), 999);
        log.write_record(b"z\n").unwrap();
        log.flush().unwrap();
        let rotated = log.rotated();
        assert_eq!(rotated.len(), 1);
        assert_eq!(fs::read(&rotated[0]).unwrap().len(), 999);
        assert_eq!(fs::read_to_string(&path).unwrap(), "z\n");
        // Another container attempt's files in the same directory are not this log's.
        fs::write(dir.path().join("10.log.20240101-000000"), "").unwrap();
        assert_eq!(log.rotated(), rotated);
    }

    #[test]
    fn sizes_parse_like_quantities() {
        assert_eq!(parse_size("10Mi"), Some(10 << 20));
        assert_eq!(parse_size("512Ki"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("10MB"), None);
        assert_eq!(parse_size("Mi"), None);
    }
}
