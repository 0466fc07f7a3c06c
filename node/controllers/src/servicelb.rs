//! ServiceLB (K3s's klipper-lb behaviour, without the svclb pods): every `type: LoadBalancer`
//! Service without a `loadBalancerClass` gets the IPs of the ready nodes (ExternalIP when a node
//! has one, else InternalIP) in `status.loadBalancer.ingress`; the service proxy answers on
//! `<node IP>:<service port>`. As in K3s, where the svclb pods' host ports would collide, a
//! Service asking for a port an older LoadBalancer Service already holds stays `<pending>`.
//! Once any node carries `svccontroller.k3s.cattle.io/enablelb=true`, only such nodes are used.

use crate::informer::{key_of, Informer, Queue};
use crate::selector::split_key;
use crate::Error;
use k3rs_client::{Client, Patch, Resource};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, info_span, Instrument};

const MANAGER: &str = "service-lb-controller";
/// K3s's node label choosing which nodes serve LoadBalancer Services.
pub const ENABLE_LB: &str = "svccontroller.k3s.cattle.io/enablelb";

#[derive(Clone)]
pub struct ServiceLbController {
    client: Arc<dyn Client>,
    services: Informer,
    nodes: Informer,
    queue: Queue,
}

fn is_ours(svc: &Value) -> bool {
    svc["spec"]["type"].as_str() == Some("LoadBalancer")
        && svc["spec"]["loadBalancerClass"].as_str().is_none()
}

/// (protocol, port) pairs of a Service.
fn ports(svc: &Value) -> BTreeSet<(String, i64)> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
                p["port"].as_i64()?,
            ))
        })
        .collect()
}

/// Older first: (creationTimestamp, namespace/name).
fn age(svc: &Value) -> (String, String) {
    (
        svc["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        key_of(svc),
    )
}

/// The addresses a node offers: ExternalIPs if it has any, else InternalIPs; none unless Ready.
pub fn node_ips(node: &Value) -> Vec<String> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    if !ready {
        return Vec::new();
    }
    let of = |ty: &str| -> Vec<String> {
        node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == ty)
            .filter_map(|a| a["address"].as_str().map(str::to_string))
            .collect()
    };
    let external = of("ExternalIP");
    if external.is_empty() {
        of("InternalIP")
    } else {
        external
    }
}

impl ServiceLbController {
    pub fn new(client: Arc<dyn Client>) -> Self {
        let me = ServiceLbController {
            client,
            services: Informer::new(Resource::core("services")),
            nodes: Informer::new(Resource::core("nodes")),
            queue: Queue::default(),
        };
        let m = me.clone();
        me.services.on_change(Box::new(move |old, new| {
            let was = old.is_some_and(is_ours);
            let is = new.is_some_and(is_ours);
            if let Some(s) = new.or(old) {
                if was || is || s["status"]["loadBalancer"]["ingress"].is_array() {
                    m.queue.add(key_of(s));
                }
            }
            // A LoadBalancer Service that goes away or changes ports may free a port another
            // one waits for.
            if was && (!is || old.map(ports) != new.map(ports)) {
                m.enqueue_all();
            }
        }));
        let m = me.clone();
        me.nodes.on_change(Box::new(move |old, new| {
            let lb = |n: &Value| n["metadata"]["labels"][ENABLE_LB].clone();
            if old.map(node_ips) != new.map(node_ips) || old.map(lb) != new.map(lb) {
                m.enqueue_all();
            }
        }));
        me
    }

    fn enqueue_all(&self) {
        for s in self.services.list(None) {
            if is_ours(&s) {
                self.queue.add(key_of(&s));
            }
        }
    }

    pub async fn run(self) {
        self.services.spawn(self.client.clone());
        self.nodes.spawn(self.client.clone());
        self.services.wait_synced().await;
        self.nodes.wait_synced().await;
        info!("servicelb controller starting");
        self.enqueue_all();
        loop {
            let key = self.queue.pop().await;
            let (ns, name) = split_key(&key);
            let span = info_span!("reconcile", kind = "Service", controller = "servicelb", namespace = %ns, name = %name);
            if let Err(e) = self.reconcile(&key).instrument(span.clone()).await {
                span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                self.queue.add_after(key, Duration::from_secs(1));
            }
        }
    }

    /// The ingress list a Service should have.
    fn want(&self, svc: &Value) -> Vec<Value> {
        if !is_ours(svc) {
            return Vec::new();
        }
        let mine = ports(svc);
        let me = age(svc);
        let blocked = self
            .services
            .list(None)
            .iter()
            .any(|o| is_ours(o) && age(o) < me && !ports(o).is_disjoint(&mine));
        if blocked {
            return Vec::new();
        }
        let nodes = self.nodes.list(None);
        // As K3s: once any node is labelled enablelb=true, only labelled nodes take LB traffic.
        let pool = nodes
            .iter()
            .any(|n| n["metadata"]["labels"][ENABLE_LB] == "true");
        let ips: BTreeSet<String> = nodes
            .iter()
            .filter(|n| !pool || n["metadata"]["labels"][ENABLE_LB] == "true")
            .flat_map(node_ips)
            .collect();
        ips.into_iter().map(|ip| json!({"ip": ip})).collect()
    }

    pub async fn reconcile(&self, key: &str) -> Result<(), Error> {
        let Some(svc) = self.services.get(key) else {
            return Ok(());
        };
        let want = self.want(&svc);
        let have = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if have == want {
            return Ok(());
        }
        let (ns, name) = split_key(key);
        let ingress = if want.is_empty() {
            Value::Null
        } else {
            json!(want)
        };
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        match self
            .client
            .patch(
                &Resource::core("services"),
                Some(ns),
                name,
                Patch::Merge(patch),
                Some("status"),
                MANAGER,
            )
            .await
        {
            Ok(o) => {
                info!(ingress = %json!(want), "load balancer status updated");
                self.services.observe(&o);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::Api("updating the load balancer status", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ips_prefer_external_and_need_ready() {
        let mut n = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"},
                          {"type": "Hostname", "address": "n1"}]}});
        assert_eq!(node_ips(&n), ["10.0.0.5"]);
        n["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "ExternalIP", "address": "203.0.113.5"}));
        assert_eq!(node_ips(&n), ["203.0.113.5"]);
        n["status"]["conditions"][0]["status"] = json!("False");
        assert!(node_ips(&n).is_empty());
    }

    #[test]
    fn only_load_balancers_without_a_class() {
        assert!(is_ours(&json!({"spec": {"type": "LoadBalancer"}})));
        assert!(!is_ours(
            &json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "x/y"}})
        ));
        assert!(!is_ours(&json!({"spec": {"type": "NodePort"}})));
    }
}
