//! A stand-in kubelet for workload tests on a server without an agent: test-made Node objects
//! (`add_node`) and a thread that marks bound pods Running+Ready (Job pods: Succeeded) and
//! finishes graceful deletions, as upstream's integration tests do. No container runs.

use crate::Cluster;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Registers a Ready Node object with `cpu` cores, 8 Gi memory and 110 pods.
pub fn add_node(c: &Cluster, name: &str, cpu: &str) -> anyhow::Result<()> {
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{name}", "labels": {{"kubernetes.io/hostname": "{name}"}}}}}}"#
        ),
    )?;
    c.ok(&[
        "patch", "node", name, "--subresource=status", "--type=merge", "-p",
        &format!(r#"{{"status": {{"capacity": {{"cpu": "{cpu}", "memory": "8Gi", "pods": "110"}},
            "allocatable": {{"cpu": "{cpu}", "memory": "8Gi", "pods": "110"}},
            "conditions": [{{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}}]}}}}"#),
    ])?;
    Ok(())
}

/// Plays the kubelet until dropped.
pub struct FakeKubelet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    pub fn start(c: &Cluster) -> FakeKubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = c.kubeconfig.clone();
        let home = c.dir.path().to_path_buf();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let kubectl = |args: &[&str]| {
                std::process::Command::new(crate::kubectl_path(None))
                    .env("KUBECONFIG", &kubeconfig)
                    .env("HOME", &home)
                    .args(args)
                    .output()
            };
            let mut n = 0u32;
            while !s.load(Ordering::SeqCst) {
                let Ok(out) = kubectl(&["get", "pods", "-A", "-o", "json"]) else {
                    continue;
                };
                let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                for p in list["items"].as_array().into_iter().flatten() {
                    let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
                    let name = p["metadata"]["name"].as_str().unwrap_or("");
                    if !p["metadata"]["deletionTimestamp"].is_null() {
                        let _ = kubectl(&[
                            "delete",
                            "pod",
                            "-n",
                            ns,
                            name,
                            "--grace-period=0",
                            "--force",
                            "--wait=false",
                        ]);
                        continue;
                    }
                    if p["spec"]["nodeName"].is_null() || p["status"]["phase"] != "Pending" {
                        continue;
                    }
                    n += 1;
                    let now = chrono_now();
                    let status = if p["metadata"]["labels"]["job-name"].is_string() {
                        r#"{"status": {"phase": "Succeeded"}}"#.to_string()
                    } else {
                        format!(
                            r#"{{"status": {{"phase": "Running", "podIP": "10.42.{}.{}",
                            "conditions": [{{"type": "Ready", "status": "True", "lastTransitionTime": "{now}"}}],
                            "containerStatuses": [{{"name": "c", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": {{"running": {{"startedAt": "{now}"}}}}}}]}}}}"#,
                            n / 250,
                            n % 250 + 1
                        )
                    };
                    let _ = kubectl(&[
                        "patch",
                        "pod",
                        "-n",
                        ns,
                        name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &status,
                    ]);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        FakeKubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn chrono_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
