//! The kubelet's side of the pod network: waits for the Node's `spec.podCIDR` (given by the node
//! IPAM controller), sets up the bridge and table through `k3rs-network`, releases addresses of
//! pods whose sandbox is gone, and attaches/detaches each pod that is not `hostNetwork`. Until
//! the network is ready such pods fail their sync with "network is not ready" and are retried,
//! as upstream's kubelet does with NetworkNotReady.

use k3rs_client::{Client, Resource};
use k3rs_network::{Cidr, HostPort, NetworkConfig, PodNetwork, Protocol};
use k3rs_runtime::{Runtime, Sandbox};
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{error, info, info_span, warn, Instrument};

/// What the pod network needs from the kubelet's configuration.
#[derive(Clone, Debug)]
pub struct NetworkSettings {
    pub node_name: String,
    /// `--cluster-cidr`.
    pub cluster_cidr: String,
    pub mtu: u32,
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
}

/// The node's pod network once it is set up.
#[derive(Default)]
pub struct Network {
    ready: OnceLock<Arc<PodNetwork>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("ready", &self.ready.get().is_some())
            .finish()
    }
}

/// The hostPorts a pod's containers publish.
pub fn host_ports(pod: &Value) -> Vec<HostPort> {
    let mut out = Vec::new();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c["ports"].as_array().into_iter().flatten() {
            let (Some(hp), Some(cp)) = (p["hostPort"].as_u64(), p["containerPort"].as_u64()) else {
                continue;
            };
            let (Ok(host_port), Ok(container_port)) = (u16::try_from(hp), u16::try_from(cp)) else {
                continue;
            };
            if host_port == 0 {
                continue;
            }
            let protocol = match p["protocol"].as_str().unwrap_or("TCP") {
                "UDP" => Protocol::Udp,
                "TCP" => Protocol::Tcp,
                // SCTP hostPorts are not supported.
                _ => continue,
            };
            out.push(HostPort {
                protocol,
                host_port,
                container_port,
                host_ip: p["hostIP"].as_str().and_then(|s| s.parse().ok()),
            });
        }
    }
    out
}

impl Network {
    pub fn new() -> Arc<Network> {
        Arc::new(Network::default())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get().is_some()
    }

    /// The pod's addresses (`status.podIPs`), when it is attached.
    pub fn pod_ips(&self, pod_uid: &str) -> Option<Vec<String>> {
        let a = self.ready.get()?.addresses(pod_uid)?;
        Some(a.addresses().iter().map(ToString::to_string).collect())
    }

    /// Attaches a pod's sandbox (idempotent; cheap once attached).
    pub async fn attach(&self, pod: &Value, sandbox: &Sandbox) -> Result<(), String> {
        let Some(net) = self.ready.get().cloned() else {
            return Err("network is not ready: the node has no podCIDR yet".into());
        };
        let uid = sandbox.pod_uid.clone();
        if net.addresses(&uid).is_some() && host_ports(pod).is_empty() {
            return Ok(());
        }
        let netns = sandbox.net_ns();
        let ports = host_ports(pod);
        tokio::task::spawn_blocking(move || net.attach(&uid, &netns, &ports))
            .await
            .map_err(|e| format!("attach task: {e}"))?
            .map(|_| ())
            .map_err(|e| error_chain(&e))
    }

    /// Detaches a pod (blocking; teardown runs on a blocking thread). Before the network is
    /// ready nothing is attached; leftovers are released by the orphan pass at setup.
    pub fn detach(&self, pod_uid: &str) {
        if let Some(net) = self.ready.get() {
            if let Err(e) = net.detach(pod_uid) {
                warn!(pod_uid, error = %error_chain(&e), "detaching the pod network");
            }
        }
    }

    /// Waits for the node's podCIDR, sets the network up and releases what pods without a
    /// sandbox left behind; retries until it succeeds.
    pub async fn start(
        self: Arc<Self>,
        client: Arc<dyn Client>,
        settings: NetworkSettings,
        runtime: Runtime,
    ) {
        let span = info_span!("pod_network", node = %settings.node_name);
        async move {
            let cluster_cidr: Cidr = match settings.cluster_cidr.parse() {
                Ok(c) => c,
                Err(e) => {
                    error!(error = %e, "invalid cluster CIDR: pods cannot get addresses");
                    return;
                }
            };
            let pod_cidr = wait_pod_cidr(client.as_ref(), &settings.node_name).await;
            let mut delay = Duration::from_millis(500);
            loop {
                let mut cfg = NetworkConfig::new(cluster_cidr, pod_cidr, &settings.agent_dir);
                cfg.mtu = settings.mtu;
                let rt = runtime.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let net = PodNetwork::setup(cfg)?;
                    let keep: HashSet<String> = rt
                        .list_sandboxes()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| s.pod_uid)
                        .collect();
                    let released = net.remove_orphans(&keep)?;
                    if !released.is_empty() {
                        info!(?released, "released addresses of pods without a sandbox");
                    }
                    Ok::<_, k3rs_network::Error>(net)
                })
                .await;
                match res {
                    Ok(Ok(net)) => {
                        let _ = self.ready.set(Arc::new(net));
                        return;
                    }
                    Ok(Err(e)) => warn!(error = %error_chain(&e), "setting up the pod network"),
                    Err(e) => warn!(error = %e, "pod network setup task"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        .instrument(span)
        .await
    }
}

async fn wait_pod_cidr(client: &dyn Client, node: &str) -> Cidr {
    let mut logged = false;
    loop {
        if let Ok(n) = client.get(&Resource::core("nodes"), None, node).await {
            if let Some(c) = n["spec"]["podCIDR"]
                .as_str()
                .and_then(|s| s.parse::<Cidr>().ok())
            {
                info!(pod_cidr = %c, "node podCIDR assigned");
                return c;
            }
        }
        if !logged {
            info!("waiting for the node's podCIDR");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_ports_from_containers() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "10.0.0.1"},
                {"containerPort": 9090},
                {"containerPort": 7, "hostPort": 7, "protocol": "SCTP"}
            ]},
            {"name": "b"}
        ]}});
        let got = host_ports(&pod);
        assert_eq!(
            got,
            vec![
                HostPort {
                    protocol: Protocol::Tcp,
                    host_port: 8080,
                    container_port: 80,
                    host_ip: None
                },
                HostPort {
                    protocol: Protocol::Udp,
                    host_port: 5353,
                    container_port: 53,
                    host_ip: Some("10.0.0.1".parse().unwrap())
                },
            ]
        );
    }
}
