//! The Node object: registration with real capacity and node info, status that changes only when
//! something changed, and the heartbeat Lease in `kube-node-lease`.

use k3rs_client::{Client, Patch, Resource};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{info, warn};

/// How this node describes itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub hostname: String,
    /// Where pod data lives; its filesystem is the node's ephemeral storage.
    pub data_dir: PathBuf,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Value>,
    pub control_plane: bool,
    pub max_pods: u32,
    pub kubelet_version: String,
    /// How the node proves it is alive (see [`Heartbeat`]).
    pub heartbeat: Heartbeat,
}

/// Lease timing. Upstream renews a 40 s lease every 10 s: right for a remote kubelet, but every
/// renewal is a committed write on the server's disk (≈ 8 MiB/hour measured with SQLite), which
/// wears out SD cards. A kubelet inside the server process shares its fate with the API server, so
/// it uses a long lease renewed rarely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub lease_duration_seconds: i64,
    pub renew_interval: Duration,
}

impl Heartbeat {
    /// Upstream's kubelet defaults, for nodes that run apart from the server.
    pub const REMOTE: Heartbeat = Heartbeat {
        lease_duration_seconds: 40,
        renew_interval: Duration::from_secs(10),
    };
    /// The kubelet inside `k3rs server`.
    pub const IN_PROCESS: Heartbeat = Heartbeat {
        lease_duration_seconds: 360,
        renew_interval: Duration::from_secs(300),
    };
}

/// Facts read from the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineInfo {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub architecture: &'static str,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// `PRETTY_NAME` from /etc/os-release.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

impl MachineInfo {
    pub fn read(data_dir: &std::path::Path) -> MachineInfo {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory_bytes =
            parse_mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default())
                .unwrap_or(0);
        let ephemeral_bytes = fs_size(data_dir).unwrap_or(0);
        MachineInfo {
            cpus,
            memory_bytes,
            ephemeral_bytes,
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image: parse_os_release(
                &std::fs::read_to_string("/etc/os-release").unwrap_or_default(),
            )
            .unwrap_or_else(|| "Linux".into()),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
        }
    }
}

/// Total size of the filesystem holding `path` (the nearest existing ancestor).
fn fs_size(path: &std::path::Path) -> Option<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let st = rustix::fs::statvfs(&p).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

/// Bytes as a Kubernetes quantity in Ki, as kubelet reports memory.
fn quantity_bytes(b: u64) -> String {
    format!("{}Ki", b / 1024)
}

/// The Node object this kubelet registers.
pub fn node_object(cfg: &NodeConfig, m: &MachineInfo, now: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(cfg.hostname));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!(m.architecture));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    labels.insert("beta.kubernetes.io/arch".into(), json!(m.architecture));
    labels.insert("node.kubernetes.io/instance-type".into(), json!("k3rs"));
    if cfg.control_plane {
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            json!("true"),
        );
        labels.insert("node-role.kubernetes.io/master".into(), json!("true"));
    }
    for (k, v) in &cfg.labels {
        labels.insert(k.clone(), json!(v));
    }
    let resources = json!({
        "cpu": m.cpus.to_string(),
        "memory": quantity_bytes(m.memory_bytes),
        "ephemeral-storage": quantity_bytes(m.ephemeral_bytes),
        "pods": cfg.max_pods.to_string(),
        "hugepages-2Mi": "0",
    });
    let mut addresses: Vec<Value> = cfg
        .addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": cfg.hostname}));
    let mut spec = json!({});
    if !cfg.taints.is_empty() {
        spec["taints"] = json!(cfg.taints);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": spec,
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": addresses,
            "conditions": conditions(now, now),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": m.machine_id, "systemUUID": m.machine_id, "bootID": m.boot_id,
                "kernelVersion": m.kernel_version, "osImage": m.os_image,
                "containerRuntimeVersion": format!("k3rs://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": cfg.kubelet_version, "kubeProxyVersion": cfg.kubelet_version,
                "operatingSystem": "linux", "architecture": m.architecture,
            },
        },
    })
}

fn conditions(heartbeat: &str, transition: &str) -> Value {
    let c = |t: &str, status: &str, reason: &str, message: &str| json!({"type": t, "status": status, "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition, "reason": reason, "message": message});
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Upstream posts node status every 5 minutes when nothing changed; changes go out at once.
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(300);

/// Creates or refreshes the Node: status (capacity, info, Ready) is written on start, labels and
/// taints given on the command line are added (existing ones are kept, as kubelet does).
pub async fn register(
    client: &dyn Client,
    cfg: &NodeConfig,
) -> Result<(), k3rs_client::ClientError> {
    let nodes = Resource::core("nodes");
    let machine = MachineInfo::read(&cfg.data_dir);
    let desired = node_object(cfg, &machine, &now());
    match client.get(&nodes, None, &cfg.name).await {
        Err(e) if e.is_not_found() => {
            client.create(&nodes, None, desired, "kubelet").await?;
            info!(node = %cfg.name, cpus = machine.cpus, memory = machine.memory_bytes, "registered node");
        }
        Err(e) => return Err(e),
        Ok(existing) => {
            let patch = json!({"metadata": {"labels": desired["metadata"]["labels"]}});
            client
                .patch(
                    &nodes,
                    None,
                    &cfg.name,
                    Patch::Strategic(patch),
                    None,
                    "kubelet",
                )
                .await?;
            let mut status = desired["status"].clone();
            // Keep transition times of conditions that did not change.
            if let Some(old) = existing
                .pointer("/status/conditions")
                .and_then(Value::as_array)
            {
                if let Some(new) = status["conditions"].as_array_mut() {
                    for c in new.iter_mut() {
                        if let Some(o) = old
                            .iter()
                            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                        {
                            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                        }
                    }
                }
            }
            client
                .patch(
                    &nodes,
                    None,
                    &cfg.name,
                    Patch::Merge(json!({"status": status})),
                    Some("status"),
                    "kubelet",
                )
                .await?;
            info!(node = %cfg.name, "node re-registered");
        }
    }
    Ok(())
}

fn lease_object(name: &str, node_uid: &str, now_micro: &str, duration: i64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": duration, "renewTime": now_micro},
    })
}

/// Renews the node Lease forever, and re-posts status every STATUS_REPORT_INTERVAL.
pub async fn heartbeat(client: std::sync::Arc<dyn Client>, cfg: NodeConfig) {
    let leases = Resource::new("coordination.k8s.io", "v1", "leases");
    let nodes = Resource::core("nodes");
    let mut last_status = tokio::time::Instant::now();
    loop {
        let node_uid = match client.get(&nodes, None, &cfg.name).await {
            Ok(n) => n["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            Err(e) if e.is_not_found() => {
                // Someone deleted our Node: register again, as kubelet does after a restart.
                if let Err(e) = register(client.as_ref(), &cfg).await {
                    warn!(error = %e, "re-registering node");
                }
                String::new()
            }
            Err(e) => {
                warn!(error = %e, "reading node");
                String::new()
            }
        };
        let stamp = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let result = match client
            .get(&leases, Some("kube-node-lease"), &cfg.name)
            .await
        {
            Err(e) if e.is_not_found() => client
                .create(
                    &leases,
                    Some("kube-node-lease"),
                    lease_object(&cfg.name, &node_uid, &stamp, cfg.heartbeat.lease_duration_seconds),
                    "kubelet",
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
            Ok(_) => client
                .patch(
                    &leases,
                    Some("kube-node-lease"),
                    &cfg.name,
                    Patch::Merge(json!({"spec": {"renewTime": stamp, "holderIdentity": cfg.name, "leaseDurationSeconds": cfg.heartbeat.lease_duration_seconds}})),
                    None,
                    "kubelet",
                )
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            warn!(error = %e, "renewing node lease");
        }
        if last_status.elapsed() >= STATUS_REPORT_INTERVAL {
            last_status = tokio::time::Instant::now();
            let t = now();
            let patch = json!({"status": {"conditions": conditions(&t, &t)}});
            // Keep transition times: fetch and carry over.
            if let Ok(existing) = client.get(&nodes, None, &cfg.name).await {
                let mut patch = patch;
                if let (Some(old), Some(new)) = (
                    existing
                        .pointer("/status/conditions")
                        .and_then(Value::as_array),
                    patch
                        .pointer_mut("/status/conditions")
                        .and_then(Value::as_array_mut),
                ) {
                    for c in new.iter_mut() {
                        if let Some(o) = old
                            .iter()
                            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                        {
                            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                        }
                    }
                }
                if let Err(e) = client
                    .patch(
                        &nodes,
                        None,
                        &cfg.name,
                        Patch::Strategic(patch),
                        Some("status"),
                        "kubelet",
                    )
                    .await
                {
                    warn!(error = %e, "posting node status");
                }
            }
        }
        tokio::time::sleep(cfg.heartbeat.renew_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_parse() {
        assert_eq!(
            parse_mem_total("MemTotal:       24568112 kB\nMemFree: 1 kB\n"),
            Some(24568112 * 1024)
        );
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn node_object_has_roles_capacity_and_info() {
        let cfg = NodeConfig {
            name: "n1".into(),
            addresses: vec!["10.0.0.5".parse().unwrap()],
            hostname: "n1".into(),
            data_dir: "/tmp".into(),
            labels: vec![("zone".into(), "a".into())],
            taints: vec![],
            control_plane: true,
            max_pods: 110,
            kubelet_version: "v1.33.0+k3rs1".into(),
            heartbeat: Heartbeat::REMOTE,
        };
        let m = MachineInfo {
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_bytes: 10 << 30,
            kernel_version: "6.1".into(),
            os_image: "k3rs".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            architecture: "amd64",
        };
        let n = node_object(&cfg, &m, "2026-01-01T00:00:00Z");
        assert_eq!(n["status"]["capacity"]["pods"], "110");
        assert_eq!(n["status"]["capacity"]["memory"], "4194304Ki");
        assert_eq!(
            n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"],
            "true"
        );
        assert_eq!(n["metadata"]["labels"]["zone"], "a");
        assert_eq!(n["status"]["addresses"][0]["address"], "10.0.0.5");
        assert_eq!(n["status"]["conditions"][3]["type"], "Ready");
    }
}
