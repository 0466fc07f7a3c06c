//! Container log rotation (`--container-log-max-size`, `--container-log-max-files`) with real
//! kubectl: `kubectl logs -f` follows a container across many rotations without losing or
//! repeating a line, the number of files stays bounded, and `kubectl logs` / `--tail` read the
//! current file as upstream does. Needs root, as the node does.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills a `kubectl logs -f` left running when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The files in a container's log directory: (current present, rotated count).
fn log_files(dir: &Path) -> (bool, usize) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (
        names.iter().any(|n| n == "0.log"),
        names.iter().filter(|n| n.starts_with("0.log.")).count(),
    )
}

const LINES: usize = 2000;

#[test]
fn logs_follow_across_rotations_and_files_stay_bounded() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    // A CRI record here is ~80 bytes, so a batch of 50 lines fills about one 4Ki file.
    let c = Cluster::start_node_with(&[
        "--container-log-max-size=4Ki",
        "--container-log-max-files=3",
    ])?;
    let node = c.node_name()?;
    let host = c.dir.path().join("signal");
    std::fs::create_dir_all(&host)?;
    // The container waits for a file the test creates once `kubectl logs -f` runs, then writes
    // LINES numbered lines in batches of 50 with a pause after each (~40 rotations).
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: chatty
spec:
  nodeName: {node}
  restartPolicy: Never
  volumes:
  - name: signal
    hostPath: {{path: {host}, type: Directory}}
  containers:
  - name: c
    image: busybox:test
    imagePullPolicy: Never
    volumeMounts: [{{name: signal, mountPath: /signal}}]
    command: ["sh", "-c", "echo waiting; until [ -e /signal/go ]; do sleep 0.1; done; i=0; while [ $i -lt {LINES} ]; do printf 'line %05d padding-padding-padding\n' $i; i=$((i+1)); if [ $((i % 50)) -eq 0 ]; then sleep 0.2; fi; done; echo done"]
"#,
        host = host.display()
    );
    c.kubectl_stdin(None, &["apply", "-f", "-"], &yaml)?;
    let running = eventually(Duration::from_secs(60), || {
        let p = c
            .ok(&["get", "pod", "chatty", "-o", "jsonpath={.status.phase}"])
            .ok()?;
        (p == "Running").then_some(())
    });
    assert!(running.is_some(), "pod never ran:\n{}", c.log());
    let uid = c.ok(&["get", "pod", "chatty", "-o", "jsonpath={.metadata.uid}"])?;
    let log_dir = c
        .data_dir()
        .join(format!("agent/logs/pods/default_chatty_{}/c", uid.trim()));

    let mut follow = c.kubectl_cmd(None);
    follow
        .args(["logs", "-f", "chatty"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = KillOnDrop(follow.spawn()?);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20))?;
    assert_eq!(first, "waiting");
    std::fs::write(host.join("go"), "")?;

    // Read the stream to its end (kubectl exits when the container has), watching the files.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let mut lines = vec![first];
    let (mut max_rotated, mut samples) = (0, 0);
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if samples % 5 == 0 {
            let (_, rotated) = log_files(&log_dir);
            max_rotated = max_rotated.max(rotated);
        }
        samples += 1;
        assert!(
            Instant::now() < deadline,
            "kubectl logs -f did not end; {} lines so far",
            lines.len()
        );
    }
    let elapsed = started.elapsed();
    let status = child.0.wait()?;
    assert!(status.success(), "kubectl logs -f: {status}");

    let mut want = vec!["waiting".to_string()];
    want.extend((0..LINES).map(|i| format!("line {i:05} padding-padding-padding")));
    want.push("done".into());
    if lines != want {
        let first_diff = lines.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "kubectl logs -f lost or repeated lines: got {}, want {}, first difference at {:?}: {:?}",
            lines.len(),
            want.len(),
            first_diff,
            first_diff.map(|i| (&lines[i], &want[i]))
        );
    }
    let (current, rotated) = log_files(&log_dir);
    assert!(current, "0.log is gone");
    assert_eq!(rotated, 2, "max files 3 = 0.log and 2 rotated");
    assert!(max_rotated <= 2, "saw {max_rotated} rotated files");
    for e in std::fs::read_dir(&log_dir)? {
        let len = e?.metadata()?.len();
        assert!(len <= 4096, "a log file has {len} bytes");
    }
    eprintln!(
        "followed {} lines across rotations in {:.1} s; at most {max_rotated} rotated files seen",
        lines.len(),
        elapsed.as_secs_f64()
    );

    let succeeded = eventually(Duration::from_secs(30), || {
        let p = c
            .ok(&["get", "pod", "chatty", "-o", "jsonpath={.status.phase}"])
            .ok()?;
        (p == "Succeeded").then_some(())
    });
    assert!(succeeded.is_some(), "pod did not succeed");
    // Like upstream, a plain `kubectl logs` shows the current file: the newest lines, whole.
    let current = c.ok(&["logs", "chatty"])?;
    let current: Vec<&str> = current.lines().collect();
    assert_eq!(current.last(), Some(&"done"));
    // At most 4 KiB of ~80-byte records: the current file only, not the whole output.
    assert!(current.len() <= 4096 / 70, "{}", current.len());
    assert_eq!(&want[want.len() - current.len()..], &current[..]);
    let tail = c.ok(&["logs", "chatty", "--tail=3"])?;
    assert_eq!(
        tail,
        format!(
            "line {:05} padding-padding-padding\nline {:05} padding-padding-padding\ndone\n",
            LINES - 2,
            LINES - 1
        )
    );
    Ok(())
}
