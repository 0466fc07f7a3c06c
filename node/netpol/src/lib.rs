//! `k3rs-netpol`: NetworkPolicy enforcement (what kube-router's policy controller does in K3s).
//!
//! Policies, pods and namespaces are watched through shared informers; every change marks the
//! ruleset dirty and a single loop re-renders the whole `ip k3rs-policy` table (see
//! [`render::render`]) and swaps it in with one `nft -f -` transaction when the text changed.
//! Enforcement sits in the `forward` hook: pods of one node talk over the `cni0` bridge, which
//! passes the IPv4 hooks because the pod network turns on br_netfilter for it, and traffic
//! between the node itself and its pods never crosses `forward`, so it stays allowed as the
//! NetworkPolicy API requires.
#![forbid(unsafe_code)]

pub mod render;

use k3rs_client::informer::Informer;
use k3rs_client::{Client, Resource};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, info_span, warn, Instrument};

/// The nftables table this crate owns.
pub const TABLE: &str = "k3rs-policy";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nft(#[from] k3rs_nft::Error),
    #[error("the nft task panicked")]
    Join,
}

/// Configuration of the policy enforcer on one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Only pods on this node get chains: the others are enforced by their own node.
    pub node_name: String,
    /// Shortest time between two ruleset swaps; changes within it are coalesced.
    pub min_sync_period: Duration,
}

/// Watches policies, pods and namespaces and keeps the ruleset in place until the process ends.
pub async fn run(client: Arc<dyn Client>, cfg: Config) {
    let policies = Informer::new(Resource::new("networking.k8s.io", "v1", "networkpolicies"));
    let pods = Informer::new(Resource::core("pods"));
    let namespaces = Informer::new(Resource::core("namespaces"));
    let dirty = Arc::new(Notify::new());
    for inf in [&policies, &pods, &namespaces] {
        let d = dirty.clone();
        inf.on_change(Box::new(move |_, _| d.notify_one()));
        inf.spawn(client.clone());
    }
    for inf in [&policies, &pods, &namespaces] {
        inf.wait_synced().await;
    }
    info!(node = %cfg.node_name, "network policy enforcement started");
    let mut applied: Option<String> = None;
    let mut backoff = cfg.min_sync_period;
    loop {
        let ruleset = render::render(&render::Inputs {
            policies: &policies.list(None),
            pods: &pods.list(None),
            namespaces: &namespaces.list(None),
            node_name: &cfg.node_name,
        });
        if applied.as_deref() != Some(ruleset.as_str()) {
            let span = info_span!("netpol_sync", bytes = ruleset.len());
            match run_nft(k3rs_nft::replace_table_script(TABLE, &ruleset))
                .instrument(span)
                .await
            {
                Ok(()) => {
                    applied = Some(ruleset);
                    backoff = cfg.min_sync_period;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "applying network policies failed");
                    applied = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        dirty.notified().await;
        tokio::time::sleep(cfg.min_sync_period).await;
    }
}

/// Removes the table (for `k3rs killall` and tests).
pub async fn cleanup() -> Result<(), Error> {
    run_nft(k3rs_nft::delete_table_script(TABLE)).await
}

/// nft is a short-lived child process: wait for it off the async worker threads.
async fn run_nft(script: String) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || k3rs_nft::Nft::new().apply(&script))
        .await
        .map_err(|_| Error::Join)??;
    Ok(())
}

/// A pod's IPv4 address, when it has one on the pod network (not hostNetwork, not finished).
pub(crate) fn pod_ip(pod: &Value) -> Option<&str> {
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return None;
    }
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
}
