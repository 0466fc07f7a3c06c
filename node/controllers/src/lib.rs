//! k3rs's controller manager: the workload and service controllers of kube-controller-manager,
//! in-process, written against [`k3rs_client::Client`].
//!
//! All controllers share one set of watch-fed caches ([`informer::Informer`]), one per resource
//! type; each controller has a de-duplicating work queue of object keys and reconciles one key at
//! a time inside an `info_span!("reconcile", kind, namespace, name)`. Nothing resyncs
//! periodically and every write is compared with what is stored first, so an idle cluster makes
//! the controllers write nothing.
#![forbid(unsafe_code)]

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
mod enqueue;
pub use k3rs_client::events;
pub use k3rs_client::informer;
pub mod history;
pub mod hpa;
pub mod job;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod quota;
pub mod replicaset;
pub mod selector;
pub mod servicelb;
pub mod statefulset;
mod status;
pub mod volumebinding;

use informer::{Informer, Queue};
use k3rs_client::{Client, ClientError, Resource};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, info_span, Instrument};

/// The loop of a keyed controller: keys off `queue` one at a time, each reconciled inside
/// `info_span!("reconcile", kind, namespace, name)`; `Ok(Some(d))` looks at the key again after
/// `d`, a failure retries it after a second.
pub(crate) async fn reconcile_keys<F, Fut>(queue: &Queue, kind: &str, reconcile: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<Duration>, Error>>,
{
    loop {
        let key = queue.pop().await;
        let (ns, name) = selector::split_key(&key);
        let span = info_span!("reconcile", kind, namespace = %ns, name = %name);
        match reconcile(key.clone()).instrument(span.clone()).await {
            Ok(Some(after)) => queue.add_after(key, after),
            Ok(None) => {}
            Err(e) => {
                span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                queue.add_after(key, Duration::from_secs(1));
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ControllersConfig {
    /// `--node-monitor-grace-period`: a node silent this long turns Unknown (None: 40 s).
    pub node_monitor_grace_period: Option<std::time::Duration>,
    /// `--cluster-cidr`: the node IPAM controller hands each Node a subnet of it (None: K3s's
    /// 10.42.0.0/16).
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's podCIDR (None: 24).
    pub node_cidr_mask_size: Option<u8>,
    /// Run ServiceLB: LoadBalancer Services get the node IPs as ingress (K3s's default;
    /// `--disable servicelb` turns it off and such Services stay pending).
    pub servicelb: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Api(&'static str, #[source] ClientError),
    #[error("{0}")]
    Config(&'static str),
}

/// What every controller shares: the client, the caches and the event recorder.
pub struct Ctx {
    pub client: Arc<dyn Client>,
    pub pods: Informer,
    pub replicasets: Informer,
    pub deployments: Informer,
    pub jobs: Informer,
    pub services: Informer,
    pub endpoints: Informer,
    pub endpointslices: Informer,
    pub replicationcontrollers: Informer,
    pub statefulsets: Informer,
    pub daemonsets: Informer,
    pub cronjobs: Informer,
    pub controllerrevisions: Informer,
    pub persistentvolumeclaims: Informer,
    pub nodes: Informer,
    pub recorder: events::Recorder,
}

impl Ctx {
    pub fn new(client: Arc<dyn Client>) -> Arc<Ctx> {
        Arc::new(Ctx {
            recorder: events::Recorder::new(client.clone(), "controller-manager"),
            client,
            pods: Informer::new(Resource::core("pods")),
            replicasets: Informer::new(replicaset::resource()),
            deployments: Informer::new(deployment::resource()),
            jobs: Informer::new(job::resource()),
            services: Informer::new(Resource::core("services")),
            endpoints: Informer::new(Resource::core("endpoints")),
            endpointslices: Informer::new(endpoints::slice_resource()),
            replicationcontrollers: Informer::new(Resource::core("replicationcontrollers")),
            statefulsets: Informer::new(statefulset::resource()),
            daemonsets: Informer::new(daemonset::resource()),
            cronjobs: Informer::new(cronjob::resource()),
            controllerrevisions: Informer::new(history::resource()),
            persistentvolumeclaims: Informer::new(Resource::core("persistentvolumeclaims")),
            nodes: Informer::new(Resource::core("nodes")),
        })
    }

    fn informers(&self) -> Vec<&Informer> {
        vec![
            &self.pods,
            &self.replicasets,
            &self.deployments,
            &self.jobs,
            &self.services,
            &self.endpoints,
            &self.endpointslices,
            &self.replicationcontrollers,
            &self.statefulsets,
            &self.daemonsets,
            &self.cronjobs,
            &self.controllerrevisions,
            &self.persistentvolumeclaims,
            &self.nodes,
        ]
    }
}

/// Builds every controller, starts the caches, waits for them to fill, then runs the
/// controllers forever.
pub async fn run(client: Arc<dyn Client>, config: ControllersConfig) {
    match nodeipam::NodeIpamController::new(
        client.clone(),
        config
            .cluster_cidr
            .as_deref()
            .unwrap_or(nodeipam::DEFAULT_CLUSTER_CIDR),
        config
            .node_cidr_mask_size
            .unwrap_or(nodeipam::DEFAULT_NODE_MASK),
    ) {
        Ok(c) => {
            tokio::spawn(c.run());
        }
        Err(e) => tracing::error!(error = %e, "node IPAM controller not started"),
    }
    if config.servicelb {
        tokio::spawn(servicelb::ServiceLbController::new(client.clone()).run());
    }
    let ctx = Ctx::new(client.clone());
    let rs = replicaset::ReplicaSetController::new(ctx.clone());
    let deploy = deployment::DeploymentController::new(ctx.clone());
    let ep = endpoints::EndpointsController::new(ctx.clone());
    let jobs = job::JobController::new(ctx.clone());
    let pdbs = disruption::DisruptionController::new(ctx.clone());
    let nodes = nodelifecycle::NodeLifecycleController::new(
        ctx.clone(),
        config
            .node_monitor_grace_period
            .unwrap_or(nodelifecycle::DEFAULT_GRACE_PERIOD),
    );
    let rc = replicaset::ReplicaSetController::replication_controllers(ctx.clone());
    let sts = statefulset::StatefulSetController::new(ctx.clone());
    let ds = daemonset::DaemonSetController::new(ctx.clone());
    let cj = cronjob::CronJobController::new(ctx.clone());
    let quotas = quota::QuotaController::new(ctx.clone());
    let volumes = volumebinding::VolumeBindingController::new(ctx.clone());
    let hpas = hpa::HpaController::new(ctx.clone());
    for i in ctx.informers() {
        i.spawn(client.clone());
    }
    for i in ctx.informers() {
        i.wait_synced().await;
    }
    info!("controllers starting");
    tokio::spawn(rs.run());
    tokio::spawn(deploy.run());
    tokio::spawn(ep.run());
    tokio::spawn(pdbs.run());
    tokio::spawn(nodes.run());
    tokio::spawn(rc.run());
    tokio::spawn(sts.run());
    tokio::spawn(ds.run());
    tokio::spawn(cj.run());
    tokio::spawn(quotas.run());
    tokio::spawn(volumes.run());
    tokio::spawn(hpas.run());
    jobs.run().await;
}
