//! Container logs for `kubectl logs`: CRI-format files (`<RFC3339Nano> <stream> <P|F> <text>`)
//! read back with tail, since, timestamps, previous and follow.

use crate::pods::Pods;
use k3rs_client::{BoxFuture, ClientError, LogOptions, PodLogs};
use std::io::{Read, Seek, SeekFrom};
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
            let text = std::fs::read_to_string(&file).unwrap_or_default();
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
            let offset = text.len() as u64;
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
                follow_file(file, offset, opts, tx, running).await;
            });
            Ok(rx)
        })
    }
}

/// Tails a log file from `offset` until the receiver goes away, or the container has stopped
/// (or restarted into a newer attempt) and its file stopped growing — then ends, as kubectl expects.
async fn follow_file(
    file: PathBuf,
    mut offset: u64,
    opts: LogOptions,
    tx: mpsc::Sender<Vec<u8>>,
    running: impl Fn() -> bool,
) {
    let mut pending = String::new();
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let Ok(mut f) = std::fs::File::open(&file) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len > offset && f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut buf = String::new();
            if f.read_to_string(&mut buf).is_ok() {
                offset += buf.len() as u64;
                pending.push_str(&buf);
                if let Some(last_nl) = pending.rfind('\n') {
                    let complete: String = pending.drain(..=last_nl).collect();
                    let lines: Vec<&str> = complete.lines().collect();
                    let out = render(&lines, &opts, None);
                    if !out.is_empty() && tx.send(out).await.is_err() {
                        return;
                    }
                }
            }
        } else if !running()
            || file
                .parent()
                .and_then(|d| pick_file(d, false))
                .is_some_and(|newest| newest != file)
        {
            // Output written just before the exit may still be pending: flush it, then end.
            let lines: Vec<&str> = pending.lines().collect();
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
}
