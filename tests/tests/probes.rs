//! Container probes and lifecycle hooks on the in-process kubelet, driven through real kubectl.
//! Needs root, as the node does.

use k3rs_e2e::{eventually, is_root, Cluster};
use serde_json::Value;
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn pod_yaml(name: &str, node: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{body}"
    )
}

fn condition(c: &Cluster, pod: &str, kind: &str) -> String {
    c.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}}"),
    ])
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// Waits until the pod's condition has `want`; returns how long it took.
fn wait_condition(c: &Cluster, pod: &str, kind: &str, want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let got = eventually(timeout, || (condition(c, pod, kind) == want).then_some(()));
    assert!(
        got.is_some(),
        "{pod}: {kind} never became {want}: {}",
        c.ok(&["get", "pod", pod, "-o", "yaml"]).unwrap_or_default()
    );
    t0.elapsed()
}

fn started_node() -> anyhow::Result<(Cluster, String)> {
    let c = Cluster::start_node()?;
    let node = c.node_name()?;
    Ok((c, node))
}

fn events_for(c: &Cluster, pod: &str) -> Vec<Value> {
    c.json(&["get", "events"])
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn readiness_probes_flip_ready_both_ways() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let (mut c, node) = started_node()?;
    // An exec readiness probe toggled by a file, behind a startup probe.
    let body = r#"  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "touch /tmp/started; exec sleep 3600"]
    startupProbe:
      exec: {command: ["cat", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
      failureThreshold: 1
"#;
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &pod_yaml("toggle", &node, body),
    )?;
    let running = eventually(Duration::from_secs(30), || {
        let p = c.json(&["get", "pod", "toggle"]).ok()?;
        (p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["started"] == true)
            .then_some(p)
    });
    let pod = running.expect("toggle never started");
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(condition(&c, "toggle", "Ready"), "False");
    assert_eq!(condition(&c, "toggle", "ContainersReady"), "False");

    c.ok(&["exec", "toggle", "--", "touch", "/tmp/ready"])?;
    let up = wait_condition(&c, "toggle", "Ready", "True", Duration::from_secs(10));
    assert_eq!(condition(&c, "toggle", "ContainersReady"), "True");
    let pod = c.json(&["get", "pod", "toggle"])?;
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);

    // While the probe keeps succeeding nothing is written.
    let rv = pod["metadata"]["resourceVersion"].clone();
    std::thread::sleep(Duration::from_secs(3));
    let again = c.json(&["get", "pod", "toggle"])?;
    assert_eq!(
        again["metadata"]["resourceVersion"], rv,
        "an idle probe wrote to the API"
    );

    // A restart of the node daemon adopts the container with its results: every version of the
    // pod written from before the restart on (a watch from that revision) stays ready.
    c.restart()?;
    let mut watch = c
        .kubectl_cmd(None)
        .args([
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/pods?watch=1&fieldSelector=metadata.name%3Dtoggle&resourceVersion={}",
                rv.as_str().unwrap_or("0")
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(5));
    let _ = watch.kill();
    let out = watch.wait_with_output()?;
    let versions: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        .collect();
    for v in &versions {
        assert_eq!(
            v["object"]["status"]["containerStatuses"][0]["ready"], true,
            "readiness flapped after a restart: {v}"
        );
    }
    assert!(
        versions.is_empty(),
        "adopting an unchanged pod rewrote its status: {versions:?}"
    );
    let pod = c.json(&["get", "pod", "toggle"])?;
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);

    c.ok(&["exec", "toggle", "--", "busybox", "rm", "/tmp/ready"])?;
    let down = wait_condition(&c, "toggle", "Ready", "False", Duration::from_secs(10));
    assert_eq!(condition(&c, "toggle", "ContainersReady"), "False");
    eprintln!("exec readiness (period 1s): ready after {up:?}, unready after {down:?}");
    assert!(
        events_for(&c, "toggle")
            .iter()
            .any(|e| e["reason"] == "Unhealthy"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Readiness probe failed")),
        "no Unhealthy event for the readiness probe"
    );
    let pod = c.json(&["get", "pod", "toggle"])?;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "readiness never restarts"
    );

    // httpGet against busybox httpd in a hostNetwork pod, on a named port: 404 is unready, 200 ready.
    let port = free_port();
    let body = format!(
        r#"  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo home > /www/index.html && exec busybox httpd -f -p {port} -h /www"]
    ports:
    - {{name: web, containerPort: {port}}}
    readinessProbe:
      httpGet:
        path: /ready.html
        port: web
        httpHeaders: [{{name: X-Probe, value: k3rs}}]
      periodSeconds: 1
      failureThreshold: 1
"#
    );
    c.kubectl_stdin(None, &["apply", "-f", "-"], &pod_yaml("web", &node, &body))?;
    let running = eventually(Duration::from_secs(30), || {
        let p = c.json(&["get", "pod", "web"]).ok()?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    assert!(running.is_some(), "web never ran");
    // The probe goes to the pod IP (the node's, for hostNetwork): 404 until the file exists.
    let unhealthy = eventually(Duration::from_secs(10), || {
        events_for(&c, "web").into_iter().find(|e| {
            e["reason"] == "Unhealthy"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("statuscode: 404")
        })
    });
    assert!(
        unhealthy.is_some(),
        "no 404 Unhealthy event while /ready.html is missing: {:?}",
        events_for(&c, "web")
    );
    assert_eq!(condition(&c, "web", "Ready"), "False");
    c.ok(&["exec", "web", "--", "sh", "-c", "echo ok > /www/ready.html"])?;
    let up = wait_condition(&c, "web", "Ready", "True", Duration::from_secs(10));
    eprintln!("httpGet readiness (period 1s): ready after {up:?}");
    c.ok(&["exec", "web", "--", "busybox", "rm", "/www/ready.html"])?;
    wait_condition(&c, "web", "Ready", "False", Duration::from_secs(10));
    Ok(())
}

#[test]
fn failing_liveness_probe_restarts_the_container() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let (c, node) = started_node()?;
    // PID 1 ignores SIGTERM here: the probe's own grace period (1s) bounds the kill.
    let body = r#"  terminationGracePeriodSeconds: 60
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
"#;
    c.kubectl_stdin(None, &["apply", "-f", "-"], &pod_yaml("live", &node, body))?;
    let t0 = Instant::now();
    let restarted = eventually(Duration::from_secs(40), || {
        let p = c.json(&["get", "pod", "live"]).ok()?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_u64()? >= 1).then_some(p)
    });
    let pod = restarted.unwrap_or_else(|| {
        panic!(
            "never restarted: {}",
            c.ok(&["get", "pod", "live", "-o", "yaml"])
                .unwrap_or_default()
        )
    });
    eprintln!(
        "liveness (period 1s, threshold 2): first restart seen {:?} after create",
        t0.elapsed()
    );
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert!(
        last["exitCode"] == 137 || last["exitCode"] == 143,
        "killed by a signal: {last}"
    );
    let events = events_for(&c, "live");
    assert!(
        events.iter().any(|e| e["reason"] == "Unhealthy"
            && e["type"] == "Warning"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("Liveness probe failed")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["reason"] == "Killing"
            && e["message"] == "Container app failed liveness probe, will be restarted"),
        "{events:?}"
    );
    let described = c.ok(&["describe", "pod", "live"])?;
    assert!(described.contains("Liveness probe failed"), "{described}");

    // A sidecar's startup probe holds back the app containers until it passes (~2s here).
    let body = r#"  terminationGracePeriodSeconds: 1
  initContainers:
  - name: side
    image: busybox:test
    imagePullPolicy: Never
    restartPolicy: Always
    command: ["sh", "-c", "sleep 2; touch /tmp/up; exec sleep 3600"]
    startupProbe:
      exec: {command: ["cat", "/tmp/up"]}
      periodSeconds: 1
      failureThreshold: 30
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#;
    c.kubectl_stdin(None, &["apply", "-f", "-"], &pod_yaml("gated", &node, body))?;
    let pod = eventually(Duration::from_secs(40), || {
        let p = c.json(&["get", "pod", "gated"]).ok()?;
        (p["status"]["containerStatuses"][0]["state"]["running"] != Value::Null).then_some(p)
    })
    .expect("app never ran");
    let side = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(side["started"], true, "{side}");
    let at = |v: &Value| {
        chrono_secs(
            v["state"]["running"]["startedAt"]
                .as_str()
                .unwrap_or_default(),
        )
    };
    let gap = (at(&pod["status"]["containerStatuses"][0]) - at(side)).rem_euclid(86_400);
    assert!(
        gap >= 2,
        "app started {gap}s after the sidecar, before its startup probe passed"
    );

    // An exec probe that hangs fails at timeoutSeconds, and its process does not pile up.
    let body = r#"  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    readinessProbe:
      exec: {command: ["sleep", "30"]}
      timeoutSeconds: 1
      periodSeconds: 1
"#;
    c.kubectl_stdin(None, &["apply", "-f", "-"], &pod_yaml("hang", &node, body))?;
    let timed_out = eventually(Duration::from_secs(30), || {
        events_for(&c, "hang").into_iter().find(|e| {
            e["reason"] == "Unhealthy" && e["message"].as_str().unwrap_or("").contains("timed out")
        })
    });
    assert!(timed_out.is_some(), "{:?}", events_for(&c, "hang"));
    std::thread::sleep(Duration::from_secs(4));
    let ps = c.ok(&["exec", "hang", "--", "ps"])?;
    let hanging = ps.lines().filter(|l| l.contains("sleep 30")).count();
    assert!(
        hanging <= 1,
        "timed-out probes left processes behind:\n{ps}"
    );
    assert_eq!(condition(&c, "hang", "Ready"), "False");
    Ok(())
}

/// Seconds of an RFC 3339 `...THH:MM:SSZ` timestamp within its day (tests run within one).
fn chrono_secs(t: &str) -> i64 {
    let hms = t.split('T').nth(1).unwrap_or("").trim_end_matches('Z');
    hms.split(':')
        .map(|x| x.parse::<i64>().unwrap_or(0))
        .fold(0, |acc, x| acc * 60 + x)
}

#[test]
fn post_start_and_pre_stop_hooks() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let (c, node) = started_node()?;
    let host = c.dir.path().join("hooks");
    std::fs::create_dir_all(&host)?;
    // postStart writes a file the main process waits for; preStop appends to a host file before
    // the SIGTERM handler does, so the file shows the order.
    let body = format!(
        r#"  terminationGracePeriodSeconds: 10
  volumes:
  - name: host
    hostPath: {{path: {host}, type: Directory}}
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    volumeMounts: [{{name: host, mountPath: /host}}]
    command: ["sh", "-c", "trap 'echo term >> /host/order; exit 0' TERM; until [ -f /tmp/poststart ]; do sleep 0.1; done; echo saw $(cat /tmp/poststart); while true; do sleep 0.2; done"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo hooked > /tmp/poststart"]}}
      preStop:
        exec: {{command: ["sh", "-c", "sleep 1; echo prestop >> /host/order"]}}
"#,
        host = host.display()
    );
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &pod_yaml("hooks", &node, &body),
    )?;
    let saw = eventually(Duration::from_secs(30), || {
        let l = c.ok(&["logs", "hooks"]).ok()?;
        l.contains("saw hooked").then_some(l)
    });
    assert!(
        saw.is_some(),
        "main container never saw the postStart file: {}",
        c.ok(&["get", "pod", "hooks", "-o", "yaml"])
            .unwrap_or_default()
    );
    let t0 = Instant::now();
    c.ok(&["delete", "pod", "hooks", "--timeout=60s"])?;
    let took = t0.elapsed();
    let order = std::fs::read_to_string(host.join("order")).unwrap_or_default();
    assert_eq!(
        order, "prestop\nterm\n",
        "preStop runs before the stop signal"
    );
    assert!(
        events_for(&c, "hooks")
            .iter()
            .any(|e| e["reason"] == "Killing" && e["message"] == "Stopping container app"),
        "{:?}",
        events_for(&c, "hooks")
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "delete took {took:?}"
    );
    eprintln!("delete with a 1s preStop hook took {took:?}");

    // A failing postStart hook kills the container: FailedPostStartHook, then a restart.
    let body = r#"  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    lifecycle:
      postStart:
        exec: {command: ["sh", "-c", "echo nope; exit 3"]}
"#;
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &pod_yaml("badhook", &node, body),
    )?;
    let failed = eventually(Duration::from_secs(30), || {
        events_for(&c, "badhook")
            .into_iter()
            .find(|e| e["reason"] == "FailedPostStartHook")
    })
    .expect("no FailedPostStartHook event");
    assert!(
        failed["message"].as_str().unwrap_or("").contains("nope"),
        "{failed}"
    );
    let restarted = eventually(Duration::from_secs(30), || {
        let p = c.json(&["get", "pod", "badhook"]).ok()?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_u64()? >= 1).then_some(())
    });
    assert!(
        restarted.is_some(),
        "{}",
        c.ok(&["get", "pod", "badhook", "-o", "yaml"])?
    );
    let pod = c.json(&["get", "pod", "badhook"])?;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["running"],
        Value::Null,
        "a container whose postStart failed is never reported running: {pod}"
    );
    Ok(())
}

#[test]
fn probes_reach_the_pod_ip() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let (c, node) = started_node()?;
    // A pod on the pod network. The web sidecar's startup (tcpSocket), readiness (httpGet) and
    // liveness (tcpSocket) probes go to the pod IP; the client starts once web is started, and
    // its postStart httpGet goes to the pod IP too — before any status carries that address.
    let body = r#"  terminationGracePeriodSeconds: 1
  initContainers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    restartPolicy: Always
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && echo ok > /www/hook.html && exec busybox httpd -f -vv -p 8080 -h /www"]
    ports:
    - {name: http, containerPort: 8080}
    startupProbe:
      tcpSocket: {port: http}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      httpGet: {path: /index.html, port: http}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
      failureThreshold: 1
  containers:
  - name: client
    image: busybox:test
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    lifecycle:
      postStart:
        httpGet: {path: /hook.html, port: 8080}
"#;
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &pod_yaml("podnet", &node, body),
    )?;
    let took = wait_condition(&c, "podnet", "Ready", "True", Duration::from_secs(40));
    let pod = c.json(&["get", "pod", "podnet"])?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or("").to_string();
    assert!(
        !ip.is_empty() && pod["status"]["podIP"] != pod["status"]["hostIP"],
        "{pod}"
    );
    eprintln!("pod network: Ready {took:?} after apply (pod IP {ip})");
    let web = eventually(Duration::from_secs(10), || {
        let p = c.json(&["get", "pod", "podnet"]).ok()?;
        let w = p["status"]["initContainerStatuses"][0].clone();
        (w["ready"] == true).then_some(w)
    });
    assert!(web.is_some(), "web never ready: {pod}");
    let logs = c.ok(&["logs", "podnet", "-c", "web"])?;
    assert!(logs.contains("url:/hook.html"), "{logs}");
    std::thread::sleep(Duration::from_secs(3));
    let pod = c.json(&["get", "pod", "podnet"])?;
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["restartCount"], 0,
        "a healthy tcpSocket liveness probe restarted web: {pod}"
    );
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "the postStart hook failed: {pod}"
    );
    let failures: Vec<Value> = events_for(&c, "podnet")
        .into_iter()
        .filter(|e| e["reason"] == "FailedPostStartHook" || e["reason"] == "Killing")
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    Ok(())
}
