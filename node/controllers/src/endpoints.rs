//! The Endpoints and EndpointSlice controllers: for each Service with a selector, the IPs of the
//! matching pods (ready ones as addresses, others as notReadyAddresses / ready=false), with named
//! target ports resolved per pod. The `kubernetes` Service is the API server's.

use crate::informer::{key_of, Queue};
use crate::selector::{self, is_terminal, split_key};
use crate::{Ctx, Error};
use k3rs_client::{DeleteParams, Resource};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info_span, Instrument};

const MANAGER: &str = "endpoint-controller";
const SLICE_MANAGER: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// (ready addresses, not-ready addresses, ports) of one Endpoints subset.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

pub fn slice_resource() -> Resource {
    Resource::new("discovery.k8s.io", "v1", "endpointslices")
}

#[derive(Clone)]
pub struct EndpointsController {
    ctx: Arc<Ctx>,
    queue: Queue,
}

impl EndpointsController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = EndpointsController {
            ctx: ctx.clone(),
            queue: Queue::default(),
        };
        let q = me.queue.clone();
        ctx.services.on_change(Box::new(move |old, new| {
            if let Some(s) = new.or(old) {
                q.add(key_of(s));
            }
        }));
        let m = me.clone();
        ctx.pods.on_change(Box::new(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                let ns = p["metadata"]["namespace"].as_str();
                for s in m.ctx.services.list(ns) {
                    if selector::map_matches(&s["spec"]["selector"], &p["metadata"]["labels"]) {
                        m.queue.add(key_of(&s));
                    }
                }
            }
        }));
        me
    }

    pub async fn run(self) {
        loop {
            let key = self.queue.pop().await;
            let (ns, name) = split_key(&key);
            let span = info_span!("reconcile", kind = "Service", namespace = %ns, name = %name);
            if let Err(e) = self.reconcile(&key).instrument(span.clone()).await {
                span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                self.queue.add_after(key, Duration::from_secs(1));
            }
        }
    }

    pub async fn reconcile(&self, key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        if ns == "default" && name == "kubernetes" {
            return Ok(());
        }
        let svc = self.ctx.services.get(key);
        let Some(svc) = svc.filter(|s| {
            s["spec"]["selector"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        }) else {
            // Gone, or without selector (its endpoints are the user's): nothing of ours to keep.
            if self.ctx.services.get(key).is_none() && self.ctx.endpoints.get(key).is_some() {
                match self
                    .ctx
                    .client
                    .delete(
                        &Resource::core("endpoints"),
                        Some(ns),
                        name,
                        &DeleteParams::default(),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::Api("deleting endpoints", e)),
                }
            }
            return Ok(());
        };
        let publish_not_ready = svc["spec"]["publishNotReadyAddresses"]
            .as_bool()
            .unwrap_or(false);
        let mut pods: Vec<Value> = self
            .ctx
            .pods
            .list(Some(ns))
            .into_iter()
            .filter(|p| selector::map_matches(&svc["spec"]["selector"], &p["metadata"]["labels"]))
            .filter(|p| {
                !is_terminal(p)
                    && p["status"]["podIP"]
                        .as_str()
                        .is_some_and(|ip| !ip.is_empty())
            })
            .collect();
        pods.sort_by(|a, b| {
            a["status"]["podIP"]
                .as_str()
                .cmp(&b["status"]["podIP"].as_str())
        });
        let svc_ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        // Endpoints: pods grouped by their resolved port list.
        let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
        // EndpointSlices: one per distinct resolved port list (pods whose named target port
        // resolves to different numbers cannot share a slice), as upstream.
        let mut slice_groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for p in &pods {
            let ports: Vec<Value> = svc_ports
                .iter()
                .filter_map(|sp| {
                    let port = resolve_port(sp, p)?;
                    let mut o =
                        json!({"port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                        o["name"] = json!(n);
                    }
                    if let Some(a) = sp.get("appProtocol") {
                        o["appProtocol"] = a.clone();
                    }
                    Some(o)
                })
                .collect();
            if ports.is_empty() && !svc_ports.is_empty() {
                continue;
            }
            let ready = selector::is_ready(p) && !selector::is_deleting(p);
            let target = json!({"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]});
            let mut addr = json!({"ip": p["status"]["podIP"], "targetRef": target});
            // A pod with hostname and subdomain = this service gets a DNS name under it (as upstream).
            let hostname = p["spec"]["hostname"]
                .as_str()
                .filter(|h| !h.is_empty() && p["spec"]["subdomain"].as_str() == Some(name));
            if let Some(h) = hostname {
                addr["hostname"] = json!(h);
            }
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                addr["nodeName"] = json!(n);
            }
            let e = subsets
                .entry(serde_json::to_string(&ports).unwrap_or_default())
                .or_insert((Vec::new(), Vec::new(), ports.clone()));
            if ready || publish_not_ready {
                e.0.push(addr);
            } else {
                e.1.push(addr);
            }
            let mut ep = json!({"addresses": [p["status"]["podIP"]],
                "conditions": {"ready": ready || publish_not_ready, "serving": selector::is_ready(p), "terminating": selector::is_deleting(p)},
                "targetRef": target});
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                ep["nodeName"] = json!(n);
            }
            if let Some(h) = hostname {
                ep["hostname"] = json!(h);
            }
            slice_groups
                .entry(serde_json::to_string(&ports).unwrap_or_default())
                .or_insert_with(|| (ports, Vec::new()))
                .1
                .push(ep);
        }
        let subsets: Vec<Value> = subsets
            .into_values()
            .map(|(a, nr, ports)| {
                let mut s = json!({"ports": ports});
                if !a.is_empty() {
                    s["addresses"] = json!(a);
                }
                if !nr.is_empty() {
                    s["notReadyAddresses"] = json!(nr);
                }
                s
            })
            .collect();
        self.write_endpoints(&svc, ns, name, subsets).await?;
        let mut groups: Vec<(Vec<Value>, Vec<Value>)> = slice_groups.into_values().collect();
        if groups.is_empty() {
            let ports = svc_ports
                .iter()
                .map(|sp| {
                    let mut o = json!({"protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                        o["name"] = json!(n);
                    }
                    o
                })
                .collect();
            groups.push((ports, Vec::new()));
        }
        self.write_slices(&svc, ns, name, groups).await
    }

    async fn write_endpoints(
        &self,
        svc: &Value,
        ns: &str,
        name: &str,
        subsets: Vec<Value>,
    ) -> Result<(), Error> {
        let r = Resource::core("endpoints");
        let labels = svc["metadata"]["labels"].clone();
        let want = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns, "labels": if labels.is_object() { labels } else { json!({}) }},
            "subsets": subsets});
        match self.ctx.endpoints.get(&format!("{ns}/{name}")) {
            None => match self.ctx.client.create(&r, Some(ns), want, MANAGER).await {
                Ok(o) => self.ctx.endpoints.observe(&o),
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(Error::Api("creating endpoints", e)),
            },
            Some(cur) => {
                let cur_subsets = cur.get("subsets").cloned().unwrap_or(json!([]));
                let cur_labels = cur["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let want_labels = want["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                if cur_subsets != want["subsets"] || cur_labels != want_labels {
                    let mut o = cur.clone();
                    o["subsets"] = want["subsets"].clone();
                    o["metadata"]["labels"] = want["metadata"]["labels"].clone();
                    match self
                        .ctx
                        .client
                        .replace(&r, Some(ns), name, o, None, MANAGER)
                        .await
                    {
                        Ok(o) => self.ctx.endpoints.observe(&o),
                        Err(e) => return Err(Error::Api("updating endpoints", e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the Service's slices match `groups` (ports, endpoints): a slice with the same
    /// ports is updated in place, leftover slices are reused, then created or deleted.
    async fn write_slices(
        &self,
        svc: &Value,
        ns: &str,
        name: &str,
        groups: Vec<(Vec<Value>, Vec<Value>)>,
    ) -> Result<(), Error> {
        let r = slice_resource();
        let mut unused: Vec<Value> = self
            .ctx
            .endpointslices
            .list(Some(ns))
            .into_iter()
            .filter(|s| {
                s["metadata"]["labels"][SERVICE_NAME] == name
                    && s["metadata"]["labels"][MANAGED_BY] == SLICE_MANAGER
            })
            .collect();
        unused.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        let mut labels = svc["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert(SERVICE_NAME.into(), json!(name));
        labels.insert(MANAGED_BY.into(), json!(SLICE_MANAGER));
        let mut plan: Vec<(Option<Value>, Vec<Value>, Vec<Value>)> = Vec::new();
        let mut pending = Vec::new();
        for (ports, endpoints) in groups {
            match unused.iter().position(|s| s["ports"] == json!(ports)) {
                Some(i) => plan.push((Some(unused.remove(i)), ports, endpoints)),
                None => pending.push((ports, endpoints)),
            }
        }
        for (ports, endpoints) in pending {
            let cur = (!unused.is_empty()).then(|| unused.remove(0));
            plan.push((cur, ports, endpoints));
        }
        for (cur, ports, endpoints) in plan {
            match cur {
                None => {
                    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"generateName": format!("{name}-"), "namespace": ns, "labels": labels,
                            "ownerReferences": [selector::owner_ref("v1", "Service", svc)]},
                        "addressType": "IPv4", "endpoints": endpoints, "ports": ports});
                    let o = self
                        .ctx
                        .client
                        .create(&r, Some(ns), slice, SLICE_MANAGER)
                        .await
                        .map_err(|e| Error::Api("creating an endpoint slice", e))?;
                    self.ctx.endpointslices.observe(&o);
                }
                Some(cur) => {
                    let same = cur.get("endpoints").cloned().unwrap_or(json!([]))
                        == json!(endpoints)
                        && cur.get("ports").cloned().unwrap_or(json!([])) == json!(ports)
                        && cur["metadata"]["labels"].as_object() == Some(&labels);
                    if !same {
                        let mut o = cur.clone();
                        o["endpoints"] = json!(endpoints);
                        o["ports"] = json!(ports);
                        o["metadata"]["labels"] = json!(labels);
                        let sn = cur["metadata"]["name"].as_str().unwrap_or("").to_string();
                        let o = self
                            .ctx
                            .client
                            .replace(&r, Some(ns), &sn, o, None, SLICE_MANAGER)
                            .await
                            .map_err(|e| Error::Api("updating an endpoint slice", e))?;
                        self.ctx.endpointslices.observe(&o);
                    }
                }
            }
        }
        for extra in unused {
            let sn = extra["metadata"]["name"].as_str().unwrap_or("");
            match self
                .ctx
                .client
                .delete(&r, Some(ns), sn, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::Api("deleting an endpoint slice", e)),
            }
        }
        Ok(())
    }
}

/// A Service port's targetPort on one pod: a number, or a container port name.
fn resolve_port(sp: &Value, pod: &Value) -> Option<i64> {
    match &sp["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => {
            if let Ok(n) = name.parse() {
                return Some(n);
            }
            pod["spec"]["containers"]
                .as_array()?
                .iter()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| {
                    p["name"].as_str() == Some(name)
                        && p["protocol"].as_str().unwrap_or("TCP")
                            == sp["protocol"].as_str().unwrap_or("TCP")
                })
                .and_then(|p| p["containerPort"].as_i64())
        }
        _ => sp["port"].as_i64(),
    }
}
