//! The Services data plane of a k3rs node: what kube-proxy does in its nftables mode, in-process.
//!
//! Services and EndpointSlices are watched through shared informers; every change marks the
//! state dirty, and a single sync loop renders the whole `ip k3rs` table as text
//! ([`render::render`], a pure function), and applies it with `nft -f -` as one transaction that
//! deletes and re-creates the table — only when the text changed, and at most once per
//! `min_sync_period`, so a burst of changes costs one sync. [`cleanup`] removes the table.
#![forbid(unsafe_code)]

pub mod model;
pub mod nft;
pub mod render;

use k3rs_client::informer::Informer;
use k3rs_client::{Client, Resource};
pub use model::Cidr;
pub use nft::Nft;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

/// What the data plane needs to know about its node.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node's name (endpoints' `nodeName` for traffic policy Local).
    pub node_name: String,
    /// Addresses that answer NodePorts (loopback addresses are ignored, as upstream).
    pub node_ips: Vec<Ipv4Addr>,
    /// Pod network: traffic from it to a ClusterIP is not masqueraded.
    pub cluster_cidr: Cidr,
    /// Service network: unknown ClusterIPs in it are dropped.
    pub service_cidr: Cidr,
    /// Service IPs answered on the node itself and skipped here (the embedded cluster DNS).
    pub local_service_ips: Vec<Ipv4Addr>,
    /// At most one sync per this period (kube-proxy's minSyncPeriod).
    pub min_sync_period: Duration,
    /// How often an idle proxy checks that its table still exists (re-created if not).
    pub table_check_period: Duration,
}

impl ProxyConfig {
    /// Defaults of K3s: cluster CIDR 10.42.0.0/16, service CIDR 10.43.0.0/16, DNS at 10.43.0.10.
    pub fn new(node_name: &str, node_ips: Vec<Ipv4Addr>) -> Self {
        ProxyConfig {
            node_name: node_name.to_string(),
            node_ips,
            cluster_cidr: Cidr {
                addr: Ipv4Addr::new(10, 42, 0, 0),
                len: 16,
            },
            service_cidr: Cidr {
                addr: Ipv4Addr::new(10, 43, 0, 0),
                len: 16,
            },
            local_service_ips: vec![Ipv4Addr::new(10, 43, 0, 10)],
            min_sync_period: Duration::from_millis(100),
            table_check_period: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nft(#[from] k3rs_nft::Error),
    #[error("the sync task ended")]
    Join,
}

/// The resource the proxy watches besides Services.
pub fn slice_resource() -> Resource {
    Resource::new("discovery.k8s.io", "v1", "endpointslices")
}

/// Removes every rule the proxy installed (for tests and `k3rs killall`).
pub fn cleanup(nft: &Nft) -> Result<(), Error> {
    Ok(nft.delete_table(render::TABLE)?)
}

/// Pods on one bridge reach each other's Services only if bridged packets pass the IP hooks
/// (conntrack must see the reply to undo the DNAT): kube-proxy's br_netfilter requirement.
fn check_bridge_netfilter() {
    match std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables") {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => warn!("net.bridge.bridge-nf-call-iptables is 0: pods on the same bridge cannot reach each other through Services"),
        Err(_) => warn!("br_netfilter is not loaded: pods on the same bridge cannot reach each other through Services"),
    }
}

/// A running proxy; dropping it stops the sync loop (the rules stay, as with kube-proxy).
pub struct Proxy {
    syncs: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts the informers and the sync loop.
    pub fn start(client: Arc<dyn Client>, config: ProxyConfig, nft: Nft) -> Proxy {
        if nft.is_local() {
            check_bridge_netfilter();
        }
        let services = Informer::new(Resource::core("services"));
        let slices = Informer::new(slice_resource());
        let dirty = Arc::new(Notify::new());
        for i in [&services, &slices] {
            let d = dirty.clone();
            i.on_change(Box::new(move |_, _| d.notify_one()));
            i.spawn(client.clone());
        }
        let (tx, syncs) = watch::channel(0);
        let span = info_span!("proxy", node = %config.node_name);
        let task =
            tokio::spawn(sync_loop(config, nft, services, slices, dirty, tx).instrument(span));
        Proxy { syncs, task }
    }

    /// Counts the rulesets applied so far (tests and benchmarks wait on it).
    pub fn syncs(&self) -> watch::Receiver<u64> {
        self.syncs.clone()
    }

    /// Runs until the sync loop ends (it does not, unless it panics).
    pub async fn wait(&mut self) -> Result<(), Error> {
        (&mut self.task).await.map_err(|_| Error::Join)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies a rendered table; ClientIP affinity entries of sets the previous table also had are
/// read back first and carried over, so clients keep their endpoints across syncs.
fn apply(nft: &Nft, text: &str, previous: Option<&str>) -> Result<(), Error> {
    let before: Vec<&str> = previous.map(render::affinity_sets).unwrap_or_default();
    let keep: Vec<&str> = render::affinity_sets(text)
        .into_iter()
        .filter(|s| before.contains(s))
        .collect();
    if keep.is_empty() {
        return Ok(nft.apply(text)?);
    }
    match nft::set_entries(nft, &keep) {
        Ok(entries) => Ok(nft.apply(&render::with_set_entries(text, &entries))?),
        Err(e) => {
            warn!(error = %e, "reading the affinity sets failed; clients may change endpoints");
            Ok(nft.apply(text)?)
        }
    }
}

async fn sync_loop(
    config: ProxyConfig,
    nft: Nft,
    services: Informer,
    slices: Informer,
    dirty: Arc<Notify>,
    applied: watch::Sender<u64>,
) {
    services.wait_synced().await;
    slices.wait_synced().await;
    info!("service proxy synced its caches");
    let mut last: Option<String> = None;
    let mut last_sync: Option<Instant> = None;
    loop {
        if let Some(at) = last_sync {
            if let Some(wait) = config.min_sync_period.checked_sub(at.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        last_sync = Some(Instant::now());
        let started = Instant::now();
        let svcs = services.list(None);
        let text = render::render(&config, &svcs, &slices.list(None));
        if last.as_deref() != Some(text.as_str()) {
            let n = nft.clone();
            let t = text.clone();
            let previous = last.clone();
            let res = tokio::task::spawn_blocking(move || apply(&n, &t, previous.as_deref()))
                .await
                .map_err(|_| Error::Join)
                .and_then(|r| r);
            match res {
                Ok(()) => {
                    debug!(
                        services = svcs.len(),
                        bytes = text.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "applied the service rules"
                    );
                    last = Some(text);
                    applied.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    warn!(error = %e, "applying the service rules failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // Wait for a change; once a minute, check the table is still there (something may
        // have flushed the ruleset) and re-create it if not.
        loop {
            if tokio::time::timeout(config.table_check_period, dirty.notified())
                .await
                .is_ok()
            {
                break;
            }
            let n = nft.clone();
            if let Ok(Ok(false)) =
                tokio::task::spawn_blocking(move || n.table_exists(render::TABLE)).await
            {
                warn!("the service table went away; re-creating it");
                last = None;
                break;
            }
        }
    }
}
