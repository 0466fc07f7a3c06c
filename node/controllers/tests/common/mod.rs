//! The setup the controller tests share: a real `Api` over the in-memory store, and a fake
//! kubelet (a task that marks pods Running+Ready, or Succeeded for Job pods, and finishes graceful
//! deletions).

// Each test binary that declares `mod common;` uses only part of it.
#![allow(dead_code)]

use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, DeleteParams, ListParams, Patch, Resource, WatchEvent};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub async fn client() -> Arc<dyn Client> {
    LocalClient::in_memory().await.expect("api")
}

pub fn pods() -> Resource {
    Resource::core("pods")
}

/// Plays the kubelet: pending pods turn Running+Ready with an IP of their own (Job pods:
/// Succeeded), and graceful deletions complete at once.
pub struct FakeKubelet {
    ready: Arc<AtomicBool>,
    delay: Duration,
}

impl Default for FakeKubelet {
    /// Readies every pod as soon as it sees it.
    fn default() -> Self {
        FakeKubelet {
            ready: Arc::new(AtomicBool::new(true)),
            delay: Duration::ZERO,
        }
    }
}

impl FakeKubelet {
    /// Pods stay Pending while `ready` is false (the test flips it).
    pub fn gated(mut self, ready: Arc<AtomicBool>) -> Self {
        self.ready = ready;
        self
    }

    /// Readies each pod `delay` after it sees it, one pod at a time.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn spawn(self, c: Arc<dyn Client>) {
        tokio::spawn(async move {
            let mut w = c
                .watch(&pods(), None, &ListParams::default())
                .await
                .expect("watch");
            let ip = AtomicU32::new(1);
            while let Some(ev) = w.next().await {
                let (WatchEvent::Added(p) | WatchEvent::Modified(p)) = ev else {
                    continue;
                };
                let ns = p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                if !p["metadata"]["deletionTimestamp"].is_null() {
                    let _ = c
                        .delete(
                            &pods(),
                            Some(&ns),
                            &name,
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                    continue;
                }
                if p["status"]["phase"] != "Pending" || !self.ready.load(Ordering::SeqCst) {
                    continue;
                }
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
                let n = ip.fetch_add(1, Ordering::SeqCst);
                let status = if p["metadata"]["labels"]["job-name"].is_string() {
                    json!({"phase": "Succeeded"})
                } else {
                    json!({"phase": "Running", "podIP": format!("10.42.{}.{}", n / 250, n % 250 + 1),
                        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                        "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {"startedAt": now}}}]})
                };
                let _ = c
                    .patch(
                        &pods(),
                        Some(&ns),
                        &name,
                        Patch::Merge(json!({"status": status})),
                        Some("status"),
                        "kubelet",
                    )
                    .await;
            }
        });
    }
}

/// Polls `f` every 20 ms until it returns something; panics naming `what` after 10 s.
pub async fn eventually<F: Fn() -> Fut, Fut: std::future::Future<Output = Option<T>>, T>(
    what: &str,
    f: F,
) -> T {
    for _ in 0..500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
