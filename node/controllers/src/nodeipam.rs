//! The node IPAM controller (kube-controller-manager's `nodeipam` with the range allocator):
//! every Node without `spec.podCIDR` gets the lowest free subnet (a /24 by default) of the
//! cluster CIDR in `spec.podCIDR` and `spec.podCIDRs`. What is taken is read from the nodes
//! themselves, so a restart never hands a subnet out twice.

use crate::informer::{key_of, Informer, Queue};
use crate::Error;
use k3rs_client::{Client, Patch, Resource};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, info_span, warn, Instrument};

pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
pub const DEFAULT_NODE_MASK: u8 = 24;
const MANAGER: &str = "node-ipam-controller";

/// An IPv4 network as (network address, prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net4 {
    pub addr: u32,
    pub prefix: u8,
}

impl Net4 {
    pub fn parse(s: &str) -> Option<Net4> {
        let (ip, len) = s.trim().split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = len.parse().ok().filter(|p| *p <= 32)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Net4 {
            addr: u32::from(ip) & mask,
            prefix,
        })
    }

    /// The `index`-th subnet of length `prefix`, or None past the end.
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Net4> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        Some(Net4 {
            addr: (u64::from(self.addr) + u64::from(index) * step) as u32,
            prefix,
        })
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

/// The lowest subnet of `cluster` with `mask` that is not in `used`.
pub fn next_free(cluster: Net4, mask: u8, used: &HashSet<Net4>) -> Option<Net4> {
    (0u32..)
        .map_while(|i| cluster.subnet(mask, i))
        .find(|s| !used.contains(s))
}

fn node_cidrs(node: &Value) -> Vec<Net4> {
    let spec = &node["spec"];
    let mut out: Vec<Net4> = spec["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(Net4::parse)
        .collect();
    out.extend(spec["podCIDR"].as_str().and_then(Net4::parse));
    out
}

#[derive(Clone)]
pub struct NodeIpamController {
    client: Arc<dyn Client>,
    nodes: Informer,
    queue: Queue,
    cluster: Net4,
    mask: u8,
    /// Subnets given out whose node update the cache may not show yet.
    given: Arc<Mutex<HashSet<Net4>>>,
}

impl NodeIpamController {
    pub fn new(client: Arc<dyn Client>, cluster_cidr: &str, mask: u8) -> Result<Self, Error> {
        let cluster = Net4::parse(cluster_cidr).ok_or(Error::Config("invalid cluster CIDR"))?;
        if mask < cluster.prefix || mask > 30 {
            return Err(Error::Config(
                "node CIDR mask does not fit the cluster CIDR",
            ));
        }
        let me = NodeIpamController {
            client,
            nodes: Informer::new(Resource::core("nodes")),
            queue: Queue::default(),
            cluster,
            mask,
            given: Arc::default(),
        };
        let q = me.queue.clone();
        me.nodes.on_change(Box::new(move |_, new| {
            if let Some(n) = new {
                if node_cidrs(n).is_empty() {
                    q.add(key_of(n));
                }
            }
        }));
        Ok(me)
    }

    pub async fn run(self) {
        self.nodes.spawn(self.client.clone());
        self.nodes.wait_synced().await;
        for n in self.nodes.list(None) {
            if node_cidrs(&n).is_empty() {
                self.queue.add(key_of(&n));
            }
        }
        loop {
            let key = self.queue.pop().await;
            let span = info_span!("reconcile", kind = "Node", name = %key);
            if let Err(e) = self.reconcile(&key).instrument(span.clone()).await {
                span.in_scope(|| warn!(error = %e, "reconcile failed"));
                self.queue.add_after(key, Duration::from_secs(1));
            }
        }
    }

    pub async fn reconcile(&self, name: &str) -> Result<(), Error> {
        let Some(node) = self.nodes.get(name) else {
            return Ok(());
        };
        if !node_cidrs(&node).is_empty() {
            return Ok(());
        }
        let mut used: HashSet<Net4> = self.nodes.list(None).iter().flat_map(node_cidrs).collect();
        used.extend(self.lock_given().iter().copied());
        let Some(cidr) = next_free(self.cluster, self.mask, &used) else {
            return Err(Error::Config(
                "the cluster CIDR has no free node subnet left",
            ));
        };
        self.lock_given().insert(cidr);
        let patch = json!({
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
        });
        match self
            .client
            .patch(
                &Resource::core("nodes"),
                None,
                name,
                Patch::Merge(patch),
                None,
                MANAGER,
            )
            .await
        {
            Ok(updated) => {
                self.nodes.observe(&updated);
                info!(pod_cidr = %cidr, "node CIDR allocated");
                Ok(())
            }
            Err(e) => {
                self.lock_given().remove(&cidr);
                if e.is_not_found() {
                    return Ok(());
                }
                Err(Error::Api("patching the node's podCIDR", e))
            }
        }
    }

    fn lock_given(&self) -> std::sync::MutexGuard<'_, HashSet<Net4>> {
        self.given.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let c = Net4::parse("10.42.0.0/16").unwrap();
        assert_eq!(c.subnet(24, 0).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(c.subnet(24, 255).unwrap().to_string(), "10.42.255.0/24");
        assert!(c.subnet(24, 256).is_none());
        let used: HashSet<Net4> = ["10.42.0.0/24", "10.42.2.0/24"]
            .iter()
            .map(|s| Net4::parse(s).unwrap())
            .collect();
        assert_eq!(next_free(c, 24, &used).unwrap().to_string(), "10.42.1.0/24");
        let tiny = Net4::parse("10.42.0.0/23").unwrap();
        let full: HashSet<Net4> = (0..2).map(|i| tiny.subnet(24, i).unwrap()).collect();
        assert!(next_free(tiny, 24, &full).is_none());
        assert_eq!(
            Net4::parse("10.42.7.9/16").unwrap().to_string(),
            "10.42.0.0/16"
        );
        assert!(Net4::parse("10.42.0.0/33").is_none());
    }
}
