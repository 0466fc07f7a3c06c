//! The kubelet: registers this machine as a Node, keeps its heartbeat, imports airgap images,
//! and runs the pods bound to it through `k3rs-runtime` and `k3rs-images`.
#![forbid(unsafe_code)]

pub mod container_spec;
pub mod exec;
pub mod images;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod portforward;
pub mod probes;
pub mod volumes;

use k3rs_client::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the image store")]
    Images(#[from] k3rs_images::Error),
    #[error("preparing the container runtime")]
    Runtime(#[from] k3rs_runtime::Error),
    #[error("registering the node")]
    Register(#[from] k3rs_client::ClientError),
}

#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node: node::NodeConfig,
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    /// `--cluster-cidr`: pods' traffic leaving it is masqueraded.
    pub cluster_cidr: String,
    /// MTU of the bridge and pod interfaces (1500; an overlay needs less).
    pub mtu: u32,
    /// `--resolv-conf`: the node's resolver for pods with dnsPolicy Default.
    pub resolv_conf: Option<PathBuf>,
    /// `--container-log-max-size` / `--container-log-max-files` (10Mi and 5 by default).
    pub container_log: k3rs_runtime::crilog::LogRotation,
    /// `registries.yaml` (`--private-registry`): mirrors and registry credentials.
    pub registries: Arc<k3rs_images::registries::Registries>,
    /// `--image-gc-high-threshold` / `--image-gc-low-threshold`.
    pub image_gc: k3rs_images::gc::GcPolicy,
}

/// A started kubelet: its pods (for log streaming) and the image store.
pub struct Kubelet {
    pub pods: Arc<pods::Pods>,
    pub logs_root: PathBuf,
}

/// Imports every `*.tar` in `<agent>/images` (K3s's airgap directory), once per file content.
pub fn import_airgap_images(images: &k3rs_images::ImageStore, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    files.sort();
    for f in files {
        match images.import_archive(&f) {
            Ok(list) => info!(file = %f.display(), images = list.len(), "imported airgap images"),
            Err(e) => warn!(file = %f.display(), error = %e, "airgap image import failed"),
        }
    }
}

impl Kubelet {
    /// Registers the node and starts the heartbeat and pod workers in the background.
    pub async fn start(client: Arc<dyn Client>, cfg: KubeletConfig) -> Result<Kubelet, Error> {
        let images = k3rs_images::ImageStore::open(cfg.agent_dir.join("images-store"))?;
        import_airgap_images(&images, &cfg.agent_dir.join("images"));
        let runtime = k3rs_runtime::Runtime::new(cfg.agent_dir.join("containers"))?;
        let image_gc_kick = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(crate::images::gc_loop(
            images.clone(),
            cfg.image_gc,
            Arc::new(k3rs_images::gc::Statvfs),
            image_gc_kick.clone(),
        ));
        node::register(client.as_ref(), &cfg.node).await?;
        tokio::spawn(node::heartbeat(client.clone(), cfg.node.clone()));
        let host_ip = cfg
            .node
            .addresses
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        let pods_cfg = pods::PodsConfig {
            node_name: cfg.node.name.clone(),
            host_ip,
            root: cfg.agent_dir.clone(),
            cluster_dns: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            registries: cfg.registries.clone(),
            image_gc_kick: image_gc_kick.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
            network: network::Network::new(),
            container_log: cfg.container_log,
        };
        tokio::spawn(pods_cfg.network.clone().start(
            client.clone(),
            network::NetworkSettings {
                node_name: cfg.node.name.clone(),
                cluster_cidr: cfg.cluster_cidr.clone(),
                mtu: cfg.mtu,
                agent_dir: cfg.agent_dir.clone(),
            },
            runtime.clone(),
        ));
        let logs_root = pods_cfg.logs_root();
        let pods = pods::Pods::new(client, runtime, images, pods_cfg);
        tokio::spawn(pods.clone().run());
        Ok(Kubelet { pods, logs_root })
    }
}
