//! Container logs for `kubectl logs`: CRI-format files (`<RFC3339Nano> <stream> <P|F> <text>`)
//! read back with tail, since, timestamps, previous and follow.

use crate::pods::Pods;
use k3rs_client::{BoxFuture, ClientError, LogOptions, PodLogs};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One parsed CRI log line.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a str,
}

pub fn parse_line(line: &str) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("");
    Some(LogLine {
        timestamp,
        stream,
        partial: tag == "P",
        content,
    })
}

/// Renders CRI lines as the container wrote them (optionally with timestamps).
pub fn render(
    lines: &[&str],
    opts: &LogOptions,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        let Some(p) = parse_line(l) else { continue };
        if let Some(since) = since {
            match chrono::DateTime::parse_from_rfc3339(p.timestamp) {
                Ok(t) if t < since => continue,
                _ => {}
            }
        }
        if opts.timestamps {
            out.extend_from_slice(p.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(p.content.as_bytes());
        if !p.partial {
            out.push(b'\n');
        }
    }
    out
}

/// The newest (or, with `previous`, the one before) `<n>.log` in a container's log dir.
pub fn pick_file(dir: &Path, previous: bool) -> Option<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let n: u32 = p.file_stem()?.to_str()?.parse().ok()?;
            (p.extension()? == "log").then_some((n, p))
        })
        .collect();
    numbered.sort();
    let idx = numbered.len().checked_sub(if previous { 2 } else { 1 })?;
    numbered.into_iter().nth(idx).map(|(_, p)| p)
}

fn since_of(opts: &LogOptions) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Some(s) = opts.since_seconds {
        return Some(chrono::Utc::now() - chrono::Duration::seconds(s));
    }
    opts.since_time
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn not_found(message: String) -> ClientError {
    ClientError {
        code: 400,
        reason: "BadRequest".into(),
        message,
    }
}

impl PodLogs for Pods {
    fn logs<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        opts: &'a LogOptions,
    ) -> BoxFuture<'a, k3rs_client::Result<mpsc::Receiver<Vec<u8>>>> {
        Box::pin(async move {
            let dir = self
                .logs_root()
                .join(format!("{namespace}_{name}_{uid}"))
                .join(&opts.container);
            let Some(file) = pick_file(&dir, opts.previous) else {
                let what = if opts.previous {
                    "previous terminated container"
                } else {
                    "container"
                };
                return Err(not_found(format!(
                    "{what} \"{}\" in pod \"{name}\" not found",
                    opts.container
                )));
            };
            // Like upstream, only the current file is read back; `-f` then follows it across
            // rotations from this very handle, so nothing is lost or repeated in between.
            let mut handle = std::fs::File::open(&file).map_err(|e| {
                not_found(format!(
                    "reading the log of container \"{}\": {e}",
                    opts.container
                ))
            })?;
            let mut bytes = Vec::new();
            let _ = handle.read_to_end(&mut bytes);
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(&bytes[..complete]);
            let all: Vec<&str> = text.lines().collect();
            let start = opts
                .tail_lines
                .map(|t| all.len().saturating_sub(t))
                .unwrap_or(0);
            let since = since_of(opts);
            let mut first = render(&all[start..], opts, since);
            if let Some(limit) = opts.limit_bytes {
                first.truncate(limit);
            }
            let (tx, rx) = mpsc::channel(16);
            let follow = opts.follow && !opts.previous;
            let opts = opts.clone();
            let follower = LogFollower {
                path: file.clone(),
                file: handle,
                pending: bytes.split_off(complete),
            };
            // `<attempt>.log` belongs to container `<uid>_<name>_<attempt>`.
            let attempt = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("0")
                .to_string();
            let id = format!("{uid}_{}_{attempt}", opts.container);
            let runtime = self.runtime().clone();
            let running = move || runtime.status(&id).map(|s| s.is_running()).unwrap_or(false);
            tokio::spawn(async move {
                if !first.is_empty() && tx.send(first).await.is_err() {
                    return;
                }
                if !follow {
                    return;
                }
                follow_file(follower, opts, tx, running).await;
            });
            Ok(rx)
        })
    }
}

/// Reads a container's log as the shim appends to it, across rotations. The shim renames the
/// full file to `<n>.log.<stamp>` and writes nothing more to it, then starts a new `<n>.log`;
/// a record is never split between files. So when `<n>.log` is no longer the file held open,
/// the held file is read to its end, then each file rotated after it (found by inode among
/// `<n>.log.*`, oldest first; those already deleted are gone for every reader), then the new
/// current file. Upstream's kubelet reopens only the current file, skipping any file rotated in
/// between two of its reads.
pub struct LogFollower {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes after the last newline read (a record being written).
    pending: Vec<u8>,
}

impl LogFollower {
    /// Follows `path` from its start.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        Ok(LogFollower {
            file: std::fs::File::open(&path)?,
            path,
            pending: Vec::new(),
        })
    }

    /// The whole records (each ending in `\n`) written since the last call.
    pub fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::MetadataExt;
        let mut buf = std::mem::take(&mut self.pending);
        loop {
            self.file.read_to_end(&mut buf)?;
            let held = self.file.metadata()?.ino();
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() != held => {}
                // Still current, or between the shim's rename and its new file.
                _ => break,
            }
            // Rotated: whatever was written before the rename is there now.
            self.file.read_to_end(&mut buf)?;
            // The current file is opened before the rotated ones are listed, so a file rotated
            // between the held one and it is in the list (unless deleted already).
            let current = std::fs::File::open(&self.path).ok();
            let rotated = k3rs_runtime::crilog::rotated_files(&self.path);
            let newer = match rotated
                .iter()
                .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == held))
            {
                Some(i) => &rotated[i + 1..],
                // Ours was deleted already, and deletion goes oldest first.
                None => &rotated[..],
            };
            match newer
                .iter()
                .find_map(|p| std::fs::File::open(p).ok())
                .or(current)
            {
                Some(f) => self.file = f,
                None => break,
            }
        }
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.pending = buf.split_off(complete);
        Ok(buf)
    }

    /// What is left unterminated (output cut short by the container's exit).
    fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Tails a log until the receiver goes away, or the container has stopped (or restarted into a
/// newer attempt) and its file stopped growing — then ends, as kubectl expects.
async fn follow_file(
    mut follower: LogFollower,
    opts: LogOptions,
    tx: mpsc::Sender<Vec<u8>>,
    running: impl Fn() -> bool,
) {
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let Ok(new) = follower.read_new() else {
            return;
        };
        if !new.is_empty() {
            let text = String::from_utf8_lossy(&new);
            let lines: Vec<&str> = text.lines().collect();
            let out = render(&lines, &opts, None);
            if !out.is_empty() && tx.send(out).await.is_err() {
                return;
            }
        } else if !running()
            || follower
                .path
                .parent()
                .and_then(|d| pick_file(d, false))
                .is_some_and(|newest| newest != follower.path)
        {
            // Output written just before the exit may still be pending: flush it, then end.
            let rest = follower.take_pending();
            let text = String::from_utf8_lossy(&rest);
            let lines: Vec<&str> = text.lines().collect();
            let out = render(&lines, &opts, None);
            if !out.is_empty() {
                let _ = tx.send(out).await;
            }
            return;
        }
    }
}

/// Lets the API server stream logs of this node's pods.
pub fn pod_logs(pods: Arc<Pods>) -> Arc<dyn PodLogs> {
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_render_with_and_without_timestamps() {
        let lines = [
            "2026-01-01T00:00:00.000000001Z stdout F hello",
            "2026-01-01T00:00:01Z stderr P par",
            "2026-01-01T00:00:01Z stderr F tial",
        ];
        assert_eq!(
            render(&lines, &LogOptions::default(), None),
            b"hello\npartial\n"
        );
        let ts = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert!(String::from_utf8(render(&lines[..1], &ts, None))
            .unwrap()
            .starts_with("2026-01-01T00:00:00.000000001Z hello"));
        let since = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            render(&lines, &LogOptions::default(), Some(since)),
            b"partial\n"
        );
    }

    #[test]
    fn picks_current_and_previous_attempts() {
        let dir = std::env::temp_dir().join(format!("k3rs-logs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [0, 1, 10] {
            std::fs::write(dir.join(format!("{n}.log")), "").unwrap();
        }
        assert_eq!(pick_file(&dir, false).unwrap(), dir.join("10.log"));
        assert_eq!(pick_file(&dir, true).unwrap(), dir.join("1.log"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn follower_reads_across_rotations_without_loss_or_repeats() {
        use k3rs_runtime::crilog::{CriLogWriter, LogRotation, RotatingLog, Stream};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let limits = LogRotation {
            max_size: 700,
            max_files: 4,
        };
        let mut w = CriLogWriter::new(RotatingLog::open(&path, limits).unwrap());
        let mut f = LogFollower::open(path.clone()).unwrap();
        let mut seen = Vec::new();
        let mut collect = |f: &mut LogFollower| {
            let text = String::from_utf8(f.read_new().unwrap()).unwrap();
            for l in text.lines() {
                seen.push(parse_line(l).unwrap().content.to_string());
            }
        };
        let mut n = 0;
        // Between two reads: nothing, a part of a file, one rotation, two rotations (a whole
        // file was written and rotated unseen), and as many as max_files keeps.
        for burst in [0, 3, 12, 25, 40, 1, 7, 33] {
            for _ in 0..burst {
                w.write(Stream::Stdout, format!("line {n:05}\n").as_bytes())
                    .unwrap();
                n += 1;
            }
            // A record half written is not returned until its newline is there.
            collect(&mut f);
        }
        w.write(Stream::Stdout, b"tail without newline").unwrap();
        collect(&mut f);
        assert_eq!(seen.len(), n);
        for (i, l) in seen.iter().enumerate() {
            assert_eq!(*l, format!("line {i:05}"));
        }
        assert!(k3rs_runtime::crilog::rotated_files(&path).len() <= 3);
    }

    #[test]
    fn follower_skips_only_what_rotation_deleted() {
        use k3rs_runtime::crilog::{CriLogWriter, LogRotation, RotatingLog, Stream};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let limits = LogRotation {
            max_size: 200,
            max_files: 2,
        };
        let mut w = CriLogWriter::new(RotatingLog::open(&path, limits).unwrap());
        w.write(Stream::Stdout, b"first\n").unwrap();
        let mut f = LogFollower::open(path.clone()).unwrap();
        // Many rotations while the follower holds the first file: the files between were
        // deleted, the newest rotated one and the current one remain.
        for i in 0..50 {
            w.write(Stream::Stdout, format!("line {i:05}\n").as_bytes())
                .unwrap();
        }
        let text = String::from_utf8(f.read_new().unwrap()).unwrap();
        let got: Vec<String> = text
            .lines()
            .map(|l| parse_line(l).unwrap().content.to_string())
            .collect();
        assert_eq!(got[0], "first");
        let nums: Vec<usize> = got[1..]
            .iter()
            .map(|l| l.trim_start_matches("line ").parse().unwrap())
            .collect();
        // The rest of the held file, one gap (the deleted files), then contiguous to the end.
        assert_eq!(nums[0], 0);
        assert_eq!(*nums.last().unwrap(), 49);
        let gaps = nums.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert_eq!(gaps, 1, "{got:?}");
        assert!(nums.windows(2).all(|w| w[1] > w[0]), "{got:?}");
    }
}
