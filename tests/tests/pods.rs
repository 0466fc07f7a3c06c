//! Pods run for real on the in-process kubelet (youki's libcontainer in per-container shims),
//! driven through real kubectl. Needs root, as the node does.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::time::{Duration, Instant};

fn pod_yaml(name: &str, node: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{body}"
    )
}

fn phase(c: &Cluster, name: &str) -> String {
    c.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
        .unwrap_or_default()
}

#[test]
fn pods_run_complete_crash_and_log() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let c = Cluster::start_node()?;
    let node = c.node_name()?;
    let ready = eventually(Duration::from_secs(20), || {
        let s = c
            .ok(&[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .ok()?;
        (s.trim() == "True").then_some(())
    });
    assert!(ready.is_some(), "node never became Ready");
    c.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=color=blue",
    ])?;
    let body = r#"  restartPolicy: Never
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello $GREETING from $POD_NAME; cat /etc/settings/color; echo; cat /etc/podinfo/labels; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo has-token"]
    env:
    - {name: GREETING, value: world}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts:
    - {name: settings, mountPath: /etc/settings}
    - {name: podinfo, mountPath: /etc/podinfo}
  volumes:
  - name: settings
    configMap: {name: settings}
  - name: podinfo
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
"#;
    let yaml = pod_yaml("once", &node, body).replace(
        "metadata:\n  name: once\n",
        "metadata:\n  name: once\n  labels: {app: demo}\n",
    );
    c.kubectl_stdin(None, &["apply", "-f", "-"], &yaml)?;
    let done = eventually(Duration::from_secs(30), || {
        (phase(&c, "once") == "Succeeded").then_some(())
    });
    assert!(
        done.is_some(),
        "pod did not complete: {}",
        c.ok(&["get", "pod", "once", "-o", "yaml"])?
    );
    let logs = c.ok(&["logs", "once"])?;
    assert!(logs.contains("hello world from once"), "{logs}");
    assert!(
        logs.contains("blue") && logs.contains("app=\"demo\""),
        "{logs}"
    );
    assert!(
        logs.contains("has-token") && logs.lines().any(|l| l == "default"),
        "service-account volume: {logs}"
    );
    // Following the log of a finished container prints it and ends.
    let followed = c.ok(&["logs", "-f", "once", "--request-timeout=20s"])?;
    assert_eq!(followed, logs);
    let table = c.ok(&["get", "pod", "once"])?;
    assert!(table.contains("Completed"), "{table}");

    // A crashing container restarts with back-off; its previous run's log stays readable.
    let crash = pod_yaml("crash", &node, "  containers:\n  - name: c\n    image: busybox:test\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"echo run; exit 3\"]\n");
    c.kubectl_stdin(None, &["apply", "-f", "-"], &crash)?;
    let looping = eventually(Duration::from_secs(30), || {
        let out = c.ok(&["get", "pod", "crash"]).ok()?;
        out.contains("CrashLoopBackOff").then_some(out)
    });
    assert!(
        looping.is_some(),
        "no CrashLoopBackOff: {}",
        c.ok(&["get", "pod", "crash", "-o", "yaml"])?
    );
    let pod = c.json(&["get", "pod", "crash"])?;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        3
    );
    assert!(
        pod["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(c.ok(&["logs", "crash", "--previous"])?.trim(), "run");

    // A command that does not exist never starts: with restartPolicy Never the pod fails with
    // the container terminated as StartError (exit code 128, the runtime's reason as message),
    // as on containerd, instead of being retried.
    let missing = pod_yaml("missing", &node, "  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:test\n    imagePullPolicy: Never\n    command: [\"/no/such/binary\"]\n");
    c.kubectl_stdin(None, &["apply", "-f", "-"], &missing)?;
    let failed = eventually(Duration::from_secs(30), || {
        (phase(&c, "missing") == "Failed").then_some(())
    });
    let pod = c.json(&["get", "pod", "missing"])?;
    assert!(failed.is_some(), "pod did not fail: {pod:#}");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "StartError", "{pod:#}");
    assert_eq!(terminated["exitCode"], 128, "{pod:#}");
    assert!(
        terminated["message"]
            .as_str()
            .is_some_and(|m| m.contains("/no/such/binary")),
        "{pod:#}"
    );
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    // And it stays that way: no second attempt.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.json(&["get", "pod", "missing"])?["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    Ok(())
}

#[test]
fn deletion_honours_grace_and_pods_survive_a_daemon_crash() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let mut c = Cluster::start_node()?;
    let node = c.node_name()?;
    // PID 1 without a SIGTERM handler ignores SIGTERM: the kubelet must SIGKILL after the grace period.
    let sleeper = pod_yaml("sleeper", &node, "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: s\n    image: busybox:test\n    imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n");
    c.kubectl_stdin(None, &["apply", "-f", "-"], &sleeper)?;
    let running = eventually(Duration::from_secs(30), || {
        (phase(&c, "sleeper") == "Running").then_some(())
    });
    assert!(running.is_some(), "sleeper never ran");
    let before = c.json(&["get", "pod", "sleeper"])?;
    let container_id = before["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or("")
        .to_string();

    // exec over WebSocket (v5.channel.k8s.io): output, stdin and exit codes.
    let out = c.kubectl(&[
        "exec",
        "sleeper",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])?;
    assert_eq!(out.status.code(), Some(3), "exit code propagates");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "out");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let echoed = c.kubectl_stdin(
        None,
        &["exec", "-i", "sleeper", "--", "cat"],
        "through stdin\n",
    )?;
    assert_eq!(echoed.trim(), "through stdin");
    assert_eq!(
        c.ok_version(Some("1.30"), &["exec", "sleeper", "--", "hostname"])?
            .trim(),
        "sleeper"
    );

    // kill -9 of the node daemon leaves the container running; the restarted daemon adopts it.
    c.restart()?;
    std::thread::sleep(Duration::from_secs(2));
    let after = c.json(&["get", "pod", "sleeper"])?;
    assert_eq!(after["status"]["phase"], "Running");
    assert_eq!(
        after["status"]["containerStatuses"][0]["restartCount"], 0,
        "adopted, not restarted"
    );
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap_or(""),
        container_id
    );

    let t0 = Instant::now();
    c.ok(&["delete", "pod", "sleeper", "--timeout=30s"])?;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "deletion took {took:?}");
    let shims = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!(
                "k3rs shim run .*{}",
                container_id.trim_start_matches("k3rs://")
            ),
        ])
        .output()?;
    assert!(
        String::from_utf8_lossy(&shims.stdout).trim().is_empty(),
        "a shim was left behind"
    );
    let sandboxes = std::fs::read_dir(c.data_dir().join("agent/containers/sandboxes"))?.count();
    assert_eq!(sandboxes, 0, "sandbox directories removed");
    let pod_logs: Vec<_> = std::fs::read_dir(c.data_dir().join("agent/logs/pods"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        pod_logs.is_empty(),
        "pod log directories left: {pod_logs:?}"
    );
    Ok(())
}
