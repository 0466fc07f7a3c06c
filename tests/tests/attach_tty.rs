//! Terminals, attach and cp with real kubectl: `exec -it` through a pty allocated in the
//! container (WebSocket with 1.33, SPDY with 1.27) with resizes and exit codes, `attach` to a
//! container started with stdin and a tty, `attach` without stdin to a container's running
//! output, `kubectl run -it --rm`, and `kubectl cp` both ways. kubectl itself runs on a pty
//! from util-linux's `script`. Needs root.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: t
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "cat; echo stdin-closed"]
    stdin: true
    stdinOnce: true
"#;

/// A pod whose main process is a shell on a terminal, kept open for attach.
fn tty_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sh"], stdin: true, tty: true}}
"#
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell words of a kubectl command line for this cluster (namespace wrapper included).
fn kubectl_line(
    c: &Cluster,
    version: Option<&str>,
    args: &[&str],
) -> (String, Vec<(String, String)>) {
    let cmd = c.kubectl_cmd(version);
    let mut words = vec![quote(&cmd.get_program().to_string_lossy())];
    words.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    words.extend(args.iter().map(|a| quote(a)));
    let env = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_string_lossy().into(), v?.to_string_lossy().into())))
        .collect();
    (words.join(" "), env)
}

/// Runs `shell` (a `sh -c` line) on a fresh pty through `script`, typing `input` (each entry
/// after its delay), and returns the exit code and everything the terminal showed.
fn on_pty(
    shell: &str,
    env: &[(String, String)],
    input: &[(u64, &str)],
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let mut child = Command::new("script")
        .args(["-qec", shell, "/dev/null"])
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("piped");
    let sink = out.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut stdin = child.stdin.take().expect("piped");
    let steps: Vec<(u64, String)> = input.iter().map(|(d, s)| (*d, s.to_string())).collect();
    // stdin stays open until the session ends: EOF would be typed as ^D.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for (delay, text) in steps {
            std::thread::sleep(Duration::from_millis(delay));
            if stdin.write_all(text.as_bytes()).is_err() {
                return;
            }
        }
        let _ = done_rx.recv();
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = done_tx.send(());
    let _ = writer.join();
    let _ = reader.join();
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    Ok((status.and_then(|s| s.code()), text))
}

fn wait_phase(c: &Cluster, pod: &str, phase: &str) {
    let ok = eventually(Duration::from_secs(60), || {
        let p = c
            .ok(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
            .ok()?;
        (p == phase).then_some(())
    });
    assert!(ok.is_some(), "pod {pod} did not get {phase}:\n{}", c.log());
}

#[test]
fn terminals_attach_and_cp() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let c = Cluster::start_node()?;
    c.kubectl_stdin(None, &["apply", "-f", "-"], PODS)?;
    for v in ["133", "127"] {
        c.kubectl_stdin(None, &["apply", "-f", "-"], &tty_pod(&format!("tty-{v}")))?;
    }
    for p in ["box", "ticker", "once", "tty-133", "tty-127"] {
        wait_phase(&c, p, "Running");
    }

    for version in [None, Some("1.27")] {
        let label = version.unwrap_or("1.33");
        // exec -it: a shell on a terminal of the container's devpts, the client's size, the
        // exit code.
        let (line, env) = kubectl_line(&c, version, &["exec", "-it", "box", "--", "sh"]);
        let started = Instant::now();
        let (code, text) = on_pty(
            &format!("stty cols 77 rows 19; {line}"),
            &env,
            &[
                (1500, "tty; stty size; echo sum=$((40+2))\n"),
                (500, "exit 3\n"),
            ],
            Duration::from_secs(30),
        )?;
        eprintln!(
            "kubectl {label}: exec -it session in {:?}",
            started.elapsed()
        );
        assert!(text.contains("/dev/pts/"), "kubectl {label}: {text}");
        assert!(
            text.contains("19 77"),
            "kubectl {label}: size not passed: {text}"
        );
        assert!(text.contains("sum=42"), "kubectl {label}: {text}");
        assert_eq!(code, Some(3), "kubectl {label}: {text}");

        // A resize during the session reaches the process's terminal.
        let (line, env) = kubectl_line(
            &c,
            version,
            &["exec", "-it", "box", "--", "sh", "-c", "sleep 4; stty size"],
        );
        let (code, text) = on_pty(
            &format!("stty cols 77 rows 19; (sleep 2; stty cols 91 rows 21 </dev/tty) & {line}"),
            &env,
            &[],
            Duration::from_secs(30),
        )?;
        assert!(
            text.contains("21 91"),
            "kubectl {label}: resize lost: {text}"
        );
        assert_eq!(code, Some(0), "kubectl {label}: {text}");

        // attach -it to a shell started with stdin and a tty: input, its echo and output, the
        // client's size; the session ends when the shell exits.
        let pod = format!("tty-{}", label.replace('.', ""));
        let (line, env) = kubectl_line(&c, version, &["attach", "-it", &pod]);
        let (code, text) = on_pty(
            &format!("stty cols 66 rows 17; {line}"),
            &env,
            &[
                (1500, "stty size; echo attached-$((6*7))\n"),
                (500, "exit 5\n"),
            ],
            Duration::from_secs(30),
        )?;
        assert!(text.contains("attached-42"), "kubectl {label}: {text}");
        assert!(text.contains("17 66"), "kubectl {label}: {text}");
        assert!(
            code.is_some(),
            "kubectl {label}: attach did not end: {text}"
        );
        wait_phase(&c, &pod, "Failed");
        let exit = c.ok(&[
            "get",
            "pod",
            &pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
        ])?;
        assert_eq!(exit, "5");
        // What the shell printed is in the log too.
        assert!(c.ok(&["logs", &pod])?.contains("attached-42"));

        // attach without stdin follows the output from now on; detaching leaves it running.
        for round in 0..2 {
            let mut child = c
                .kubectl_cmd(version)
                .args(["attach", "ticker"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let mut stdout = child.stdout.take().expect("piped");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            let mut seen = String::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while seen.matches("tick").count() < 5 && Instant::now() < deadline {
                if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                    seen.push_str(&String::from_utf8_lossy(&chunk));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            let ticks: Vec<u64> = seen
                .lines()
                .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
                .collect();
            assert!(
                ticks.len() >= 5,
                "kubectl {label} round {round}: attach saw {seen:?}"
            );
            assert!(
                ticks.windows(2).all(|w| w[1] == w[0] + 1),
                "kubectl {label}: output not in order: {ticks:?}"
            );
            // From now on, not the log's beginning.
            assert!(ticks[0] > 0, "kubectl {label}: attach replayed old output");
        }
        wait_phase(&c, "ticker", "Running");

        // kubectl cp is exec + tar: into the pod and back, byte-exact.
        let dir = tempfile::tempdir()?;
        let data: Vec<u8> = (0u32..300_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, &data)?;
        let src_s = src.to_string_lossy().into_owned();
        c.ok_version(version, &["cp", &src_s, "box:/tmp/copied.bin"])?;
        let size = c.ok(&["exec", "box", "--", "ls", "-l", "/tmp/copied.bin"]);
        let back = dir.path().join("back.bin");
        let back_s = back.to_string_lossy().into_owned();
        c.ok_version(version, &["cp", "box:/tmp/copied.bin", &back_s])?;
        assert!(
            std::fs::read(&back)? == data,
            "kubectl {label}: cp round trip differs (size in pod: {size:?})"
        );
    }

    // attach -i without a terminal: stdin through a pipe; with stdinOnce the end of the first
    // session's stdin is the container's EOF.
    let out = c.kubectl_stdin(None, &["attach", "-i", "once"], "hello through a pipe\n")?;
    assert!(out.contains("hello through a pipe"), "{out}");
    wait_phase(&c, "once", "Succeeded");
    assert_eq!(
        c.ok(&["logs", "once"])?,
        "hello through a pipe\nstdin-closed\n"
    );

    // The shim owns the attach socket: a restarted node daemon attaches to what it adopted.
    let mut c = c;
    c.restart()?;
    c.wait_ready(Duration::from_secs(60))?;
    let attached = eventually(Duration::from_secs(30), || {
        let mut child = c
            .kubectl_cmd(None)
            .args(["attach", "ticker"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdout = child.stdout.take()?;
        let mut buf = [0u8; 256];
        let n = stdout.read(&mut buf).unwrap_or(0);
        let _ = child.kill();
        let _ = child.wait();
        String::from_utf8_lossy(&buf[..n])
            .contains("tick")
            .then_some(())
    });
    assert!(
        attached.is_some(),
        "no attach after the restart:\n{}",
        c.log()
    );

    // kubectl run -it --rm: create with stdin+tty, wait, attach, delete afterwards.
    let (line, env) = kubectl_line(
        &c,
        None,
        &[
            "run",
            "-it",
            "--rm",
            "--image=busybox:test",
            "--restart=Never",
            "x",
            "--",
            "sh",
        ],
    );
    let (code, text) = on_pty(
        &line,
        &env,
        &[(4000, "echo run-$((6*7))\n"), (1000, "exit\n")],
        Duration::from_secs(90),
    )?;
    assert!(text.contains("run-42"), "{text}\n{}", c.log());
    assert_eq!(code, Some(0), "{text}");
    let gone = eventually(Duration::from_secs(30), || {
        let o = c.kubectl(&["get", "pod", "x"]).ok()?;
        (!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("NotFound"))
            .then_some(())
    });
    assert!(gone.is_some(), "pod x was not deleted");
    Ok(())
}
