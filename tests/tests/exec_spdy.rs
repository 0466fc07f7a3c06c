//! `kubectl exec` over plain SPDY/3.1 (`POST …/exec`, `Upgrade: SPDY/3.1`,
//! `v4.channel.k8s.io`), as kubectl 1.27–1.29 speak it: output on stdout and stderr streams,
//! stdin with EOF, exit codes through the error stream's Status. Needs root.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::time::{Duration, Instant};

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
"#;

#[test]
fn exec_over_spdy_with_kubectl_1_27_to_1_29() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let c = Cluster::start_node()?;
    c.kubectl_stdin(None, &["apply", "-f", "-"], POD)?;
    let running = eventually(Duration::from_secs(60), || {
        let phase = c
            .ok(&["get", "pod", "box", "-o", "jsonpath={.status.phase}"])
            .ok()?;
        (phase == "Running").then_some(())
    });
    assert!(running.is_some(), "pod did not get running:\n{}", c.log());

    // kubectl 1.33 still takes the WebSocket (v5) path.
    assert_eq!(c.ok(&["exec", "box", "--", "echo", "ws"])?, "ws\n");

    for version in ["1.27", "1.28", "1.29"] {
        let v = Some(version);
        let started = Instant::now();
        let out = c.ok_version(v, &["exec", "box", "--", "echo", "hello"])?;
        assert_eq!(out, "hello\n", "kubectl {version}");
        eprintln!("kubectl {version}: exec echo in {:?}", started.elapsed());

        // The upgrade is a SPDY POST.
        let o = c.kubectl_version(v, &["-v=6", "exec", "box", "--", "true"])?;
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "kubectl {version}: {log}");
        assert!(
            log.lines()
                .any(|l| l.contains("POST") && l.contains("/pods/box/exec") && l.contains("101")),
            "kubectl {version} did not POST the upgrade: {log}"
        );

        // stderr and a non-zero exit code.
        let o = c.kubectl_version(
            v,
            &[
                "exec",
                "box",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        )?;
        assert_eq!(o.status.code(), Some(3), "kubectl {version}: {o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("err\n"),
            "{o:?}"
        );

        // stdin, closed at its end; larger than one flow-control window.
        let big: String = (0..20_000).map(|i| format!("{i}\n")).collect();
        assert!(big.len() > 64 * 1024);
        let out = c.kubectl_stdin(v, &["exec", "-i", "box", "--", "busybox", "wc", "-c"], &big)?;
        assert_eq!(out.trim(), big.len().to_string(), "kubectl {version}");
        let out = c.kubectl_stdin(v, &["exec", "-i", "box", "--", "busybox", "cat"], &big)?;
        assert!(
            out == big,
            "kubectl {version}: cat returned {} bytes",
            out.len()
        );
    }
    Ok(())
}
