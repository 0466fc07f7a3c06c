//! The scheduler's view of the cluster: nodes and the pods bound (or assumed) to them, kept from
//! watches so that scheduling a pod never lists anything.

use crate::podmeta::PodMeta;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Requests used for scoring pods that request nothing (upstream's `DefaultMilliCPURequest` and
/// `DefaultMemoryRequest`), in milli-units.
pub const DEFAULT_CPU_MILLI: i64 = 100;
pub const DEFAULT_MEMORY_MILLI: i64 = 200 * 1024 * 1024 * 1000;

/// Parses a Kubernetes quantity ("100m", "1.5", "128Mi", "1e3", "2G") into milli-units.
pub fn parse_quantity_milli(s: &str) -> Option<i64> {
    let milli = k3rs_resources::quantity::Quantity::parse(s.trim())
        .ok()?
        .milli();
    i64::try_from(milli).ok()
}

fn quantity_map(v: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if let Some(m) = v.as_object() {
        for (k, q) in m {
            let parsed = match q {
                Value::String(s) => parse_quantity_milli(s),
                Value::Number(n) => parse_quantity_milli(&n.to_string()),
                _ => None,
            };
            if let Some(p) = parsed {
                out.insert(k.clone(), p);
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i64,
}

impl HostPort {
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (wild(&self.ip) || wild(&other.ip) || self.ip == other.ip)
    }
}

/// What the scheduler needs to know about a pod.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub requests: BTreeMap<String, i64>,
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub host_ports: Vec<HostPort>,
    pub owner_uid: Option<String>,
    pub node: String,
    /// Identity, labels, priority, pod (anti-)affinity: for inter-pod affinity, topology spread
    /// and preemption.
    pub meta: Arc<PodMeta>,
}

impl PodInfo {
    pub fn from_pod(pod: &Value) -> PodInfo {
        let spec = &pod["spec"];
        let mut requests: BTreeMap<String, i64> = BTreeMap::new();
        let mut host_ports = Vec::new();
        let container_requests = |c: &Value| {
            let r = quantity_map(&c["resources"]["requests"]);
            if r.is_empty() {
                quantity_map(&c["resources"]["limits"])
            } else {
                r
            }
        };
        for c in spec["containers"].as_array().into_iter().flatten() {
            for (k, v) in container_requests(c) {
                *requests.entry(k).or_default() += v;
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(hp) = p["hostPort"].as_i64().filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                        ip: p["hostIP"].as_str().unwrap_or("").to_string(),
                        port: hp,
                    });
                }
            }
        }
        // Init containers run one at a time before the app containers: the pod needs the max.
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            let sidecar = c["restartPolicy"].as_str() == Some("Always");
            for (k, v) in container_requests(c) {
                let e = requests.entry(k).or_default();
                if sidecar {
                    *e += v;
                } else if v > *e {
                    *e = v;
                }
            }
        }
        for (k, v) in quantity_map(&spec["overhead"]) {
            *requests.entry(k).or_default() += v;
        }
        let nonzero_cpu = requests
            .get("cpu")
            .copied()
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_CPU_MILLI);
        let nonzero_memory = requests
            .get("memory")
            .copied()
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_MEMORY_MILLI);
        PodInfo {
            requests,
            nonzero_cpu,
            nonzero_memory,
            host_ports,
            owner_uid: controller_uid(pod),
            node: spec["nodeName"].as_str().unwrap_or("").to_string(),
            meta: Arc::new(PodMeta::from_pod(pod)),
        }
    }
}

/// The uid of the pod's controlling owner (its ReplicaSet, StatefulSet, Job...).
pub fn controller_uid(obj: &Value) -> Option<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .and_then(|r| r["uid"].as_str())
        .map(String::from)
}

#[derive(Clone, Debug)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// A node and the pods assigned to it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Map<String, Value>,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub allocatable: BTreeMap<String, i64>,
    pub requested: BTreeMap<String, i64>,
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub pod_count: i64,
    pub host_ports: Vec<HostPort>,
    pub owner_counts: HashMap<String, u32>,
    /// The pods on the node by key, and the subset with pod (anti-)affinity terms of their own
    /// (so the symmetric anti-affinity check does not look at every pod).
    pub pods: HashMap<String, Arc<PodMeta>>,
    pub affinity_pods: HashMap<String, Arc<PodMeta>>,
    /// The parts of the Node that scheduling depends on, to tell a relevant change from a heartbeat.
    pub fingerprint: Value,
}

impl NodeInfo {
    pub fn fingerprint(node: &Value) -> Value {
        serde_json::json!([
            node["metadata"]["labels"],
            node["spec"]["unschedulable"],
            node["spec"]["taints"],
            node["status"]["allocatable"],
        ])
    }

    /// Updates the node's own fields, keeping the accounting of its pods.
    pub fn set_node(&mut self, node: &Value) {
        self.name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
        self.labels = node["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        self.unschedulable = node["spec"]["unschedulable"].as_bool().unwrap_or(false);
        self.taints = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Taint {
                key: t["key"].as_str().unwrap_or("").to_string(),
                value: t["value"].as_str().unwrap_or("").to_string(),
                effect: t["effect"].as_str().unwrap_or("").to_string(),
            })
            .collect();
        let alloc = &node["status"]["allocatable"];
        self.allocatable = quantity_map(if alloc.is_object() {
            alloc
        } else {
            &node["status"]["capacity"]
        });
        self.fingerprint = Self::fingerprint(node);
    }

    pub fn add_pod(&mut self, p: &PodInfo) {
        for (k, v) in &p.requests {
            *self.requested.entry(k.clone()).or_default() += v;
        }
        self.nonzero_cpu += p.nonzero_cpu;
        self.nonzero_memory += p.nonzero_memory;
        self.pod_count += 1;
        self.host_ports.extend(p.host_ports.iter().cloned());
        if let Some(uid) = &p.owner_uid {
            *self.owner_counts.entry(uid.clone()).or_default() += 1;
        }
        let key = p.meta.key();
        if p.meta.affinity.is_some() {
            self.affinity_pods.insert(key.clone(), p.meta.clone());
        }
        self.pods.insert(key, p.meta.clone());
    }

    pub fn remove_pod(&mut self, p: &PodInfo) {
        for (k, v) in &p.requests {
            *self.requested.entry(k.clone()).or_default() -= v;
        }
        self.nonzero_cpu -= p.nonzero_cpu;
        self.nonzero_memory -= p.nonzero_memory;
        self.pod_count -= 1;
        for hp in &p.host_ports {
            if let Some(i) = self.host_ports.iter().position(|h| h == hp) {
                self.host_ports.swap_remove(i);
            }
        }
        if let Some(uid) = &p.owner_uid {
            if let Some(c) = self.owner_counts.get_mut(uid) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.owner_counts.remove(uid);
                }
            }
        }
        let key = p.meta.key();
        self.pods.remove(&key);
        self.affinity_pods.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity_milli("100m"), Some(100));
        assert_eq!(parse_quantity_milli("2"), Some(2000));
        assert_eq!(parse_quantity_milli("1.5"), Some(1500));
        assert_eq!(parse_quantity_milli("1Ki"), Some(1024 * 1000));
        assert_eq!(parse_quantity_milli("1Gi"), Some(1073741824 * 1000));
        assert_eq!(parse_quantity_milli("1G"), Some(1_000_000_000 * 1000));
        assert_eq!(parse_quantity_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_quantity_milli("x"), None);
    }
}
