//! `kubectl port-forward` through real kubectl 1.27–1.33: 1.31+ (SPDY/3.1 frames inside a
//! WebSocket, `GET …/portforward`) and ≤ 1.30 (plain SPDY/3.1 after `POST` + `Upgrade`), several
//! connections through one forward each receive what the pod's server sends; a port where
//! nothing listens gets its dial error on the error stream. Needs root.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "nc -ll -p 8081 -e cat /bin/busybox & exec nc -ll -p 8080 -e echo hi"]
"#;

/// A running `kubectl port-forward`, killed on drop.
struct Forward {
    child: Child,
    stderr: mpsc::Receiver<String>,
    said: std::cell::RefCell<Vec<String>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Forward {
    /// Starts `kubectl port-forward pod/web LOCAL:REMOTE` and waits for "Forwarding from".
    fn start(
        c: &Cluster,
        version: Option<&str>,
        local: u16,
        remote: u16,
    ) -> anyhow::Result<Forward> {
        Forward::start_as(c, version, None, local, remote)
    }

    /// As `start`, impersonating `user` (`--as`).
    fn start_as(
        c: &Cluster,
        version: Option<&str>,
        user: Option<&str>,
        local: u16,
        remote: u16,
    ) -> anyhow::Result<Forward> {
        let mut cmd = c.kubectl_cmd(version);
        if let Some(u) = user {
            cmd.arg(format!("--as={u}"));
        }
        let mut child = cmd
            .args([
                "port-forward",
                "-v=6",
                "--address=127.0.0.1",
                "pod/web",
                &format!("{local}:{remote}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut f = Forward {
            child,
            stderr,
            said: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match out_rx.recv_timeout(left) {
                Ok(line) if line.starts_with("Forwarding from 127.0.0.1") => return Ok(f),
                Ok(_) => {}
                Err(_) => {
                    let _ = f.child.kill();
                    let _ = f.child.wait();
                    // The reader thread has seen everything once kubectl is gone.
                    std::thread::sleep(Duration::from_millis(100));
                    anyhow::bail!(
                        "kubectl {version:?} port-forward did not start: {}",
                        f.stderr()
                    );
                }
            }
        }
    }

    /// Everything kubectl wrote to stderr so far.
    fn stderr(&self) -> String {
        let mut said = self.said.borrow_mut();
        said.extend(self.stderr.try_iter());
        said.join("\n")
    }
}

/// What a client connecting to `127.0.0.1:port` in the node's namespace receives.
fn fetch_bytes(c: &Cluster, port: u16) -> Vec<u8> {
    c.command("busybox")
        .args(["nc", "-w", "5", "127.0.0.1", &port.to_string()])
        .stdin(Stdio::null())
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default()
}

fn fetch(c: &Cluster, port: u16) -> String {
    String::from_utf8_lossy(&fetch_bytes(c, port)).into_owned()
}

#[test]
fn port_forward_with_kubectl_1_27_to_1_33() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let c = Cluster::start_node()?;
    c.kubectl_stdin(None, &["apply", "-f", "-"], POD)?;
    let running = eventually(Duration::from_secs(60), || {
        let out = c
            .ok(&[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ])
            .ok()?;
        let (phase, ip) = out.trim().split_once(' ')?;
        (phase == "Running" && !ip.is_empty()).then_some(())
    });
    assert!(
        running.is_some(),
        "pod did not get running: {}\n{}",
        c.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
        c.log()
    );

    // Every kubectl minor from 1.27 to 1.33: 1.31+ tunnel through a WebSocket.
    let versions = [
        (None, 18101u16),
        (Some("1.32"), 18102),
        (Some("1.31"), 18103),
        (Some("1.30"), 18104),
        (Some("1.29"), 18105),
        (Some("1.28"), 18106),
        (Some("1.27"), 18107),
    ];
    for (version, local) in versions {
        let f = Forward::start(&c, version, local, 8080)?;
        for i in 0..4 {
            let started = Instant::now();
            let got = fetch(&c, local);
            assert_eq!(
                got.trim(),
                "hi",
                "kubectl {version:?}, connection {i}: got {got:?}; kubectl: {}\n{}",
                f.stderr(),
                c.log()
            );
            eprintln!(
                "kubectl {}: connection {i} answered in {:?}",
                version.unwrap_or("1.33"),
                started.elapsed()
            );
        }
        // Which wire it took: 1.33 tunnels SPDY through a WebSocket GET, 1.27 upgrades a POST.
        let log = f.stderr();
        let websocket = matches!(version, None | Some("1.31") | Some("1.32"));
        let method = if websocket { "GET" } else { "POST" };
        assert!(
            log.lines().any(|l| l.contains(method)
                && l.contains("/pods/web/portforward")
                && l.contains("101")),
            "kubectl {version:?} did not {method} the upgrade: {log}"
        );
        drop(f);

        // A bulk transfer, far beyond one flow-control window: the pod sends its busybox
        // binary (the host's, the image is built from it).
        let want = std::fs::read("/bin/busybox")?;
        let f = Forward::start(&c, version, local + 50, 8081)?;
        let started = Instant::now();
        let got = fetch_bytes(&c, local + 50);
        let took = started.elapsed();
        assert!(
            got == want,
            "kubectl {version:?}: got {} of {} bytes; kubectl: {}",
            got.len(),
            want.len(),
            f.stderr()
        );
        eprintln!(
            "kubectl {}: {} bytes in {took:?} ({:.0} MB/s)",
            version.unwrap_or("1.33"),
            got.len(),
            got.len() as f64 / took.as_secs_f64() / 1e6
        );
    }

    // RBAC: port-forward needs `create` on pods/portforward (and, for the WebSocket GET,
    // `get` too, as upstream); `get` alone is refused on both wires.
    const RBAC: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: forwarder}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get]}
- {apiGroups: [""], resources: [pods/portforward], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: forwarder}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: forwarder}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: jane}]
"#;
    c.kubectl_stdin(None, &["apply", "-f", "-"], RBAC)?;
    for version in [None, Some("1.27")] {
        let err = match Forward::start_as(&c, version, Some("jane"), 18185, 8080) {
            Ok(f) => panic!(
                "kubectl {version:?} forwarded without create: {}",
                f.stderr()
            ),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("forbidden"), "kubectl {version:?}: {err}");
    }
    c.ok(&[
        "patch",
        "role",
        "forwarder",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/rules/1/verbs","value":["get","create"]}]"#,
    ])?;
    for (version, local) in [(None, 18186u16), (Some("1.27"), 18187)] {
        let f = Forward::start_as(&c, version, Some("jane"), local, 8080)?;
        assert_eq!(
            fetch(&c, local).trim(),
            "hi",
            "kubectl {version:?}: {}",
            f.stderr()
        );
    }

    // Nothing listens on 9999: the connection gets nothing, kubectl hears why on the error
    // stream.
    let f = Forward::start(&c, Some("1.27"), 18183, 9999)?;
    assert_eq!(fetch(&c, 18183).trim(), "");
    let said = eventually(Duration::from_secs(10), || {
        let s = f.stderr();
        s.contains("error forwarding port").then_some(s)
    })
    .unwrap_or_else(|| f.stderr());
    assert!(
        said.contains("error forwarding port 9999"),
        "kubectl said: {said:?}"
    );
    Ok(())
}
