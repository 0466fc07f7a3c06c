//! securityContext, OOM kills, QoS classes and pod cgroups, end to end: pods on the in-process
//! kubelet driven through real kubectl, checked from inside the container (`id`,
//! `/proc/self/status`) and from the host (cgroup directories, mounts, shims). Needs root.

use k3rs_e2e::{eventually, is_root, k3rs_bin, Cluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pod_yaml(name: &str, node: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{body}"
    )
}

/// A one-container busybox pod running `script` once.
fn script_pod(
    name: &str,
    node: &str,
    pod_extra: &str,
    container_extra: &str,
    script: &str,
) -> String {
    pod_yaml(
        name,
        node,
        &format!(
            "  restartPolicy: Never\n{pod_extra}  containers:\n  - name: main\n    image: busybox:test\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", {script:?}]\n{container_extra}"
        ),
    )
}

fn start() -> anyhow::Result<Option<(Cluster, String)>> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(None);
    }
    let c = Cluster::start_node()?;
    let node = c.node_name()?;
    Ok(Some((c, node)))
}

fn phase(c: &Cluster, name: &str) -> String {
    c.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
        .unwrap_or_default()
}

/// Waits for a run-once pod to succeed and returns its log.
fn output_of(c: &Cluster, name: &str) -> anyhow::Result<String> {
    let done = eventually(Duration::from_secs(60), || {
        let p = phase(c, name);
        (p == "Succeeded" || p == "Failed").then_some(p)
    });
    let logs = c.ok(&["logs", name]).unwrap_or_default();
    assert_eq!(
        done.as_deref(),
        Some("Succeeded"),
        "pod {name}: log {logs:?}\n{}",
        c.ok(&["get", "pod", name, "-o", "yaml"])?
    );
    Ok(logs)
}

/// A hex capability mask from `/proc/self/status` text (`CapEff:\t...`).
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
}

fn cap_mask(status: &str) -> u64 {
    u64::from_str_radix(status_field(status, "CapEff"), 16).expect("hex CapEff")
}

#[test]
fn security_context_reaches_the_process() -> anyhow::Result<()> {
    let Some((c, node)) = start()? else {
        return Ok(());
    };
    c.ok(&["create", "configmap", "cfg", "--from-literal=key=value"])?;
    let pods = [
        script_pod(
            "ids",
            &node,
            "  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}\n",
            "    volumeMounts:\n    - {name: data, mountPath: /data}\n    - {name: cfg, mountPath: /cfg}\n  volumes:\n  - {name: data, emptyDir: {}}\n  - {name: cfg, configMap: {name: cfg}}\n",
            "id; touch /data/made; ls -ln /data/made; ls -lnd /data; ls -ln /cfg/key",
        ),
        script_pod(
            "nonroot",
            &node,
            "  securityContext: {runAsNonRoot: true}\n",
            "",
            "id",
        ),
        script_pod(
            "readonly",
            &node,
            "",
            "    securityContext: {readOnlyRootFilesystem: true}\n    volumeMounts:\n    - {name: scratch, mountPath: /scratch}\n  volumes:\n  - {name: scratch, emptyDir: {}}\n",
            "touch /x 2>/dev/null && echo root-writable || echo root-readonly; touch /scratch/y && echo volume-writable",
        ),
        script_pod(
            "netadmin",
            &node,
            "",
            "    securityContext: {capabilities: {add: [NET_ADMIN]}}\n",
            "cat /proc/self/status",
        ),
        script_pod(
            "dropall",
            &node,
            "",
            "    securityContext: {capabilities: {drop: [ALL]}}\n",
            "cat /proc/self/status",
        ),
        script_pod(
            "privileged",
            &node,
            "",
            "    securityContext: {privileged: true}\n",
            "cat /proc/self/status; test -c /dev/kmsg && echo has-kmsg; touch /sys/k3rs-probe 2>&1; echo",
        ),
        script_pod(
            "confined",
            &node,
            "  securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
            "    securityContext: {allowPrivilegeEscalation: false}\n",
            "cat /proc/self/status",
        ),
        script_pod(
            "podlevel",
            &node,
            "  hostPID: true\n  hostIPC: true\n  securityContext:\n    sysctls: [{name: net.ipv4.ping_group_range, value: \"0 4242\"}]\n",
            "",
            "cat /proc/sys/net/ipv4/ping_group_range; cat /proc/1/comm; ls -l /proc/self/ns/ipc",
        ),
        script_pod(
            "defaults",
            &node,
            "",
            "",
            "cat /proc/self/status",
        ),
    ];
    // A long-running locked-down container: exec (and so exec probes) must work in it too.
    let locked = pod_yaml(
        "locked",
        &node,
        "  terminationGracePeriodSeconds: 1\n  securityContext: {runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}\n  containers:\n  - name: main\n    image: busybox:test\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, readOnlyRootFilesystem: true}\n",
    );
    for p in pods.iter().chain([&locked]) {
        c.kubectl_stdin(None, &["apply", "-f", "-"], p)?;
    }

    // runAsUser/runAsGroup/supplementalGroups/fsGroup, and fsGroup owning the volumes.
    let ids = output_of(&c, "ids")?;
    let id_line = ids.lines().next().unwrap_or("");
    assert!(id_line.starts_with("uid=1000 gid=3000 "), "id: {id_line}");
    let groups = id_line.split("groups=").nth(1).unwrap_or("");
    for g in ["2000", "4000"] {
        assert!(
            groups.split(',').any(|x| x.starts_with(g)),
            "group {g} missing: {id_line}"
        );
    }
    // `ls -ln`: mode links uid gid ...
    let gid_of = |line: &str| line.split_whitespace().nth(3).map(String::from);
    let lines: Vec<&str> = ids.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{ids}");
    assert_eq!(gid_of(lines[0]).as_deref(), Some("2000"), "new file: {ids}");
    assert!(
        lines[1].starts_with("drwxrwsrwx"),
        "emptyDir is setgid: {ids}"
    );
    assert_eq!(gid_of(lines[1]).as_deref(), Some("2000"), "emptyDir: {ids}");
    assert_eq!(
        gid_of(lines[2]).as_deref(),
        Some("2000"),
        "configMap: {ids}"
    );

    // runAsNonRoot with an image running as root is refused before it starts.
    let refused = eventually(Duration::from_secs(30), || {
        let p = c.json(&["get", "pod", "nonroot"]).ok()?;
        let waiting = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    });
    let waiting = refused.expect("no CreateContainerConfigError for runAsNonRoot");
    let message = waiting["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_default("
        ) && message.ends_with(", container: main)"),
        "{message}"
    );

    // A container that never started leaves no root filesystem mounted behind it.
    let nonroot_uid = c.ok(&["get", "pod", "nonroot", "-o", "jsonpath={.metadata.uid}"])?;
    c.ok(&["delete", "pod", "nonroot", "--timeout=60s"])?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.lines().any(|l| l.contains(nonroot_uid.trim())),
        "mounts left for the refused pod"
    );

    let ro = output_of(&c, "readonly")?;
    assert!(ro.contains("root-readonly"), "{ro}");
    assert!(ro.contains("volume-writable"), "{ro}");

    let defaults = output_of(&c, "defaults")?;
    let default_caps = cap_mask(&defaults);
    // containerd's default set: CHOWN .. AUDIT_WRITE, SETFCAP (0xa80425fb).
    assert_eq!(default_caps, 0xa80425fb, "{defaults}");
    assert_eq!(status_field(&defaults, "NoNewPrivs"), "0");
    assert_eq!(status_field(&defaults, "Seccomp"), "0");

    const NET_ADMIN: u64 = 1 << 12;
    let net_admin = cap_mask(&output_of(&c, "netadmin")?);
    assert_eq!(net_admin, default_caps | NET_ADMIN);

    assert_eq!(cap_mask(&output_of(&c, "dropall")?), 0);

    let privileged = output_of(&c, "privileged")?;
    // Every capability the node itself may hold (its bounding set: all of them, except in
    // sandboxes that run the node without some).
    let own = std::fs::read_to_string("/proc/self/status")?;
    let bounding = u64::from_str_radix(status_field(&own, "CapBnd"), 16)?;
    assert!(bounding.count_ones() >= 38, "bounding set {bounding:x}");
    assert_eq!(cap_mask(&privileged), bounding, "{privileged}");
    assert_eq!(status_field(&privileged, "Seccomp"), "0");
    assert!(
        privileged.contains("has-kmsg"),
        "host devices: {privileged}"
    );
    assert!(
        !privileged.contains("Read-only file system"),
        "/sys is writable: {privileged}"
    );

    // Namespaced sysctls are set in the pod's network namespace; hostPID shows the host's
    // PID 1 rather than the container's own shell.
    let podlevel = output_of(&c, "podlevel")?;
    let mut lines = podlevel.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["0", "4242"]),
        "{podlevel}"
    );
    let host_init = std::fs::read_to_string("/proc/1/comm")?;
    assert_eq!(lines.next(), Some(host_init.trim()), "{podlevel}");
    // hostIPC: the host's IPC namespace (`ls -l` shows the link's target, ipc:[inode]).
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc")?;
    assert!(
        lines
            .next()
            .is_some_and(|l| l.ends_with(&*host_ipc.to_string_lossy())),
        "{podlevel} vs {}",
        host_ipc.display()
    );

    let running = eventually(Duration::from_secs(60), || {
        (phase(&c, "locked") == "Running").then_some(())
    });
    assert!(running.is_some(), "locked never ran");
    let exec = c.ok(&["exec", "locked", "--", "cat", "/proc/self/status"])?;
    // Not the seccomp filter: libcontainer 0.7's tenant builder (exec) does not carry
    // linux.seccomp (see ARCHITECTURE.md).
    assert_eq!(status_field(&exec, "NoNewPrivs"), "1", "{exec}");
    assert_eq!(cap_mask(&exec), 0, "{exec}");
    assert!(status_field(&exec, "Uid").starts_with("1000"), "{exec}");

    let confined = output_of(&c, "confined")?;
    assert_eq!(status_field(&confined, "NoNewPrivs"), "1", "{confined}");
    assert_eq!(status_field(&confined, "Seccomp"), "2", "{confined}");
    // Deleted, so their pod cgroups do not outlive the test on the host.
    c.ok(&["delete", "pods", "--all", "--timeout=60s"])?;
    Ok(())
}

#[test]
fn memory_hog_is_oom_killed() -> anyhow::Result<()> {
    let Some((c, node)) = start()? else {
        return Ok(());
    };
    // The string doubles until the 20Mi limit stops it.
    let hog = script_pod(
        "hog",
        &node,
        "",
        "    resources: {limits: {memory: 20Mi}}\n",
        "x=0123456789abcdef; while true; do x=$x$x; done",
    );
    c.kubectl_stdin(None, &["apply", "-f", "-"], &hog)?;
    let terminated = eventually(Duration::from_secs(60), || {
        let p = c.json(&["get", "pod", "hog"]).ok()?;
        let t = p["status"]["containerStatuses"][0]["state"]["terminated"].clone();
        (!t.is_null()).then_some((t, p))
    });
    let (t, pod) = terminated.expect("the hog never ended");
    assert_eq!(t["reason"], "OOMKilled", "{pod:#}");
    assert_eq!(t["exitCode"], 137, "{pod:#}");
    assert_eq!(pod["status"]["phase"], "Failed");
    c.ok(&["delete", "pod", "hog", "--timeout=60s"])?;
    Ok(())
}

/// The hierarchy to look for pod cgroups in: the v2 tree, or v1's memory hierarchy.
fn cgroup_base() -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    }
}

/// Every directory named `pod<uid>` below `dir`, in any hierarchy.
fn pod_cgroups(uid: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 4 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if e.file_name().to_string_lossy() == name {
                out.push(e.path());
            } else {
                walk(&e.path(), name, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    let roots: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        vec![PathBuf::from("/sys/fs/cgroup/kubepods")]
    } else {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| {
                rd.flatten()
                    // cpu → cpu,cpuacct and the like: each hierarchy once.
                    .filter(|e| !e.file_type().map(|t| t.is_symlink()).unwrap_or(true))
                    .map(|e| e.path().join("kubepods"))
                    .collect()
            })
            .unwrap_or_default()
    };
    for r in roots {
        walk(&r, &format!("pod{uid}"), 0, &mut out);
    }
    out
}

fn memory_limit(dir: &Path) -> Option<u64> {
    ["memory.max", "memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|s| s.trim().parse().ok())
}

#[test]
fn qos_classes_pod_cgroups_and_nothing_left_behind() -> anyhow::Result<()> {
    let Some((c, node)) = start()? else {
        return Ok(());
    };
    let sleeper = |name: &str, resources: &str| {
        pod_yaml(
            name,
            &node,
            &format!(
                "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: busybox:test\n    imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n{resources}"
            ),
        )
    };
    let pods = [
        (
            "guaranteed",
            "    resources: {limits: {cpu: 100m, memory: 64Mi}}\n",
            "Guaranteed",
            "kubepods",
        ),
        (
            "burstable",
            "    resources: {requests: {memory: 16Mi}}\n",
            "Burstable",
            "burstable",
        ),
        ("besteffort", "", "BestEffort", "besteffort"),
    ];
    for (name, resources, _, _) in &pods {
        c.kubectl_stdin(None, &["apply", "-f", "-"], &sleeper(name, resources))?;
    }
    let base = cgroup_base();
    let mut uids = Vec::new();
    for (name, _, qos, parent) in &pods {
        let running = eventually(Duration::from_secs(60), || {
            let p: Value = c.json(&["get", "pod", name]).ok()?;
            (p["status"]["phase"] == "Running").then_some(p)
        });
        let p = running.unwrap_or_else(|| panic!("{name} never ran:\n{}", c.log()));
        assert_eq!(p["status"]["qosClass"], *qos, "{name}");
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let dir = pod_cgroup_dir(&base, qos, &uid);
        assert!(dir.is_dir(), "{name}: no {}", dir.display());
        assert!(
            dir.parent().and_then(Path::file_name) == Some(parent.as_ref()),
            "{name}: {}",
            dir.display()
        );
        // The container's cgroup sits inside the pod's.
        let children = std::fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .count();
        assert_eq!(
            children,
            1,
            "{name}: container cgroups in {}",
            dir.display()
        );
        if *qos == "Guaranteed" {
            assert_eq!(memory_limit(&dir), Some(64 << 20), "pod-level memory limit");
        }
        uids.push(uid);
    }

    let data = c.data_dir();
    for (name, _, _, _) in &pods {
        c.ok(&["delete", "pod", name, "--timeout=60s"])?;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    for uid in &uids {
        assert_eq!(pod_cgroups(uid), Vec::<PathBuf>::new(), "pod cgroups left");
        let left: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&data.display().to_string()) && l.contains(uid.as_str()))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
        let sandbox = data.join("agent/containers/sandboxes").join(uid);
        assert!(!sandbox.exists(), "{} left", sandbox.display());
        let shims = std::process::Command::new("pgrep")
            .args(["-f", &format!("k3rs shim .*{uid}")])
            .output()?;
        assert!(
            String::from_utf8_lossy(&shims.stdout).trim().is_empty(),
            "a shim was left behind"
        );
    }

    // `k3rs killall` takes the pod cgroups of running pods with it too.
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &sleeper("survivor", "    resources: {requests: {cpu: 50m}}\n"),
    )?;
    let uid = eventually(Duration::from_secs(60), || {
        let p: Value = c.json(&["get", "pod", "survivor"]).ok()?;
        (p["status"]["phase"] == "Running")
            .then(|| p["metadata"]["uid"].as_str().map(String::from))?
    })
    .expect("survivor never ran");
    assert_eq!(
        pod_cgroups(&uid).len(),
        if cgroup_base().ends_with("memory") {
            v1_hierarchies()
        } else {
            1
        }
    );
    let out = c
        .command(k3rs_bin())
        .args(["killall", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(
        out.status.success(),
        "killall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pod_cgroups(&uid),
        Vec::<PathBuf>::new(),
        "killall left pod cgroups"
    );
    Ok(())
}

/// The v1 controller hierarchies a pod cgroup is created in.
fn v1_hierarchies() -> usize {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    !e.file_type().map(|t| t.is_symlink()).unwrap_or(true)
                        && name != "systemd"
                        && name != "unified"
                })
                .count()
        })
        .unwrap_or(0)
}

fn pod_cgroup_dir(base: &Path, qos: &str, uid: &str) -> PathBuf {
    let kubepods = base.join("kubepods");
    match qos {
        "Guaranteed" => kubepods.join(format!("pod{uid}")),
        "Burstable" => kubepods.join("burstable").join(format!("pod{uid}")),
        _ => kubepods.join("besteffort").join(format!("pod{uid}")),
    }
}
