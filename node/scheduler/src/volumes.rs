//! Persistent volumes in scheduling (upstream's VolumeBinding plugin, reduced): a pod whose claim
//! is bound may only go where the PersistentVolume's node affinity allows; a claim of a
//! `WaitForFirstConsumer` class that is still unbound needs an Available volume reachable from
//! the node (or a provisioner), and once the pod is placed the claim is annotated with
//! `volume.kubernetes.io/selected-node` so the binder (k3rs-controllers) binds it there.
//!
//! The matching of claims to volumes lives here because both the scheduler and the binder use it.

use crate::cache::{parse_quantity_milli, NodeInfo};
use crate::plugins::term_matches;
use k3rs_client::{Client, ListParams, Patch, Resource};
use serde_json::{json, Value};

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
pub const AFFINITY_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const NO_VOLUME_TO_BIND: &str = "node(s) didn't find available persistent volumes to bind";
/// Claims and volumes are not watched by the scheduler: a pod they keep out is tried again after
/// this long.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the volume's `spec.nodeAffinity.required` lets it be used from `node`.
pub fn volume_allows_node(pv: &Value, node: &NodeInfo) -> bool {
    match pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array)
    {
        Some(terms) if !terms.is_empty() => terms.iter().any(|t| term_matches(t, node)),
        _ => true,
    }
}

/// The claim's class: `spec.storageClassName`, "" for none.
pub fn claim_class(pvc: &Value) -> &str {
    pvc.pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn storage(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_str).and_then(parse_quantity_milli)
}

/// Whether `pv` can hold `pvc` (upstream's `FindMatchingVolume` checks, node aside): free or
/// pre-bound to this claim, same class and volume mode, every requested access mode, enough
/// capacity, and the claim's label selector.
pub fn volume_fits_claim(pvc: &Value, pv: &Value) -> bool {
    let claim_ref = &pv["spec"]["claimRef"];
    if claim_ref.is_object() {
        let same = claim_ref["name"] == pvc["metadata"]["name"]
            && claim_ref["namespace"] == pvc["metadata"]["namespace"]
            && (claim_ref["uid"].is_null() || claim_ref["uid"] == pvc["metadata"]["uid"]);
        if !same {
            return false;
        }
    } else if !matches!(
        pv.pointer("/status/phase").and_then(Value::as_str),
        None | Some("Available" | "Pending")
    ) {
        return false;
    }
    if pv["metadata"]["deletionTimestamp"].is_string() {
        return false;
    }
    let pv_class = pv
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if pv_class != claim_class(pvc) {
        return false;
    }
    let mode = |v: &Value| v.as_str().unwrap_or("Filesystem").to_string();
    if mode(&pv["spec"]["volumeMode"]) != mode(&pvc["spec"]["volumeMode"]) {
        return false;
    }
    let pv_modes: Vec<&Value> = pv["spec"]["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !pvc["spec"]["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|m| pv_modes.contains(&m))
    {
        return false;
    }
    let want = storage(pvc.pointer("/spec/resources/requests/storage")).unwrap_or(0);
    let have = storage(pv.pointer("/spec/capacity/storage")).unwrap_or(0);
    if have < want {
        return false;
    }
    let selector = &pvc["spec"]["selector"];
    selector.is_null() || k3rs_client::labels::matches(selector, &pv["metadata"]["labels"])
}

/// The volume to bind `pvc` to: one pre-bound to it wins, else the smallest that fits (and is
/// reachable from `node`, when the claim waits for its first consumer).
pub fn best_volume<'a>(
    pvc: &Value,
    pvs: &'a [Value],
    node: Option<&NodeInfo>,
) -> Option<&'a Value> {
    let fitting = pvs
        .iter()
        .filter(|pv| volume_fits_claim(pvc, pv))
        .filter(|pv| node.is_none_or(|n| volume_allows_node(pv, n)));
    let mut best: Option<&Value> = None;
    for pv in fitting {
        if pv["spec"]["claimRef"].is_object() {
            return Some(pv);
        }
        let size = |v: &Value| storage(v.pointer("/spec/capacity/storage")).unwrap_or(0);
        if best.is_none_or(|b| size(pv) < size(b)) {
            best = Some(pv);
        }
    }
    best
}

/// A claim of the pod that shapes where it can go.
#[derive(Debug, Clone)]
enum ClaimNeed {
    /// Bound: the node must satisfy the volume's node affinity.
    Bound(Value),
    /// Unbound, waiting for its first consumer: some Available volume must be reachable from
    /// the node, unless the class has a provisioner.
    Delayed { claim: Value, provisioned: bool },
    /// Cannot be scheduled at all (message).
    Blocked(String),
}

/// What the pod's PersistentVolumeClaims require of a node; empty for pods without claims.
#[derive(Debug, Clone, Default)]
pub struct VolumeNeeds {
    needs: Vec<ClaimNeed>,
    volumes: Vec<Value>,
}

fn claim_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
        })
        .map(String::from)
        .collect()
}

impl VolumeNeeds {
    /// Reads the pod's claims, their volumes and classes. Only pods that use claims pay for it.
    pub async fn load(client: &dyn Client, pod: &Value) -> VolumeNeeds {
        let names = claim_names(pod);
        if names.is_empty() {
            return VolumeNeeds::default();
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut out = VolumeNeeds::default();
        let mut listed_volumes = false;
        for name in names {
            let pvc = match client
                .get(&Resource::core("persistentvolumeclaims"), Some(ns), &name)
                .await
            {
                Ok(p) => p,
                Err(_) => {
                    out.needs.push(ClaimNeed::Blocked(format!(
                        "persistentvolumeclaim \"{name}\" not found"
                    )));
                    continue;
                }
            };
            if let Some(volume) = pvc
                .pointer("/spec/volumeName")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
            {
                match client
                    .get(&Resource::core("persistentvolumes"), None, volume)
                    .await
                {
                    Ok(pv) => out.needs.push(ClaimNeed::Bound(pv)),
                    Err(_) => out.needs.push(ClaimNeed::Blocked(format!(
                        "persistentvolume \"{volume}\" not found"
                    ))),
                }
                continue;
            }
            let class_name = claim_class(&pvc).to_string();
            let class = if class_name.is_empty() {
                None
            } else {
                client
                    .get(
                        &Resource::new("storage.k8s.io", "v1", "storageclasses"),
                        None,
                        &class_name,
                    )
                    .await
                    .ok()
            };
            let delayed = class
                .as_ref()
                .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
            if !delayed {
                // Upstream keeps the pod Pending ("pod has unbound immediate
                // PersistentVolumeClaims") until the claim binds. With no dynamic provisioner in
                // k3rs yet such a claim may never bind (StatefulSet claims without a made-up PV),
                // so its pods are scheduled anyway, as before this filter existed.
                continue;
            }
            let provisioned = class
                .as_ref()
                .and_then(|c| c["provisioner"].as_str())
                .is_some_and(|p| p != NO_PROVISIONER);
            if !listed_volumes {
                listed_volumes = true;
                if let Ok(list) = client
                    .list(
                        &Resource::core("persistentvolumes"),
                        None,
                        &ListParams::default(),
                    )
                    .await
                {
                    out.volumes = list.items;
                }
            }
            out.needs.push(ClaimNeed::Delayed {
                claim: pvc,
                provisioned,
            });
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.needs.is_empty()
    }

    /// Why `node` cannot take the pod's volumes, if it cannot.
    pub fn filter(&self, node: &NodeInfo) -> Option<String> {
        for need in &self.needs {
            match need {
                ClaimNeed::Blocked(m) => return Some(m.clone()),
                ClaimNeed::Bound(pv) if !volume_allows_node(pv, node) => {
                    return Some(AFFINITY_CONFLICT.into())
                }
                ClaimNeed::Delayed {
                    claim,
                    provisioned: false,
                } if best_volume(claim, &self.volumes, Some(node)).is_none() => {
                    return Some(NO_VOLUME_TO_BIND.into())
                }
                _ => {}
            }
        }
        None
    }

    /// Records the chosen node on every delayed claim, before the pod is bound.
    pub async fn select_node(&self, client: &dyn Client, node: &str) {
        for need in &self.needs {
            let ClaimNeed::Delayed { claim, .. } = need else {
                continue;
            };
            if claim["metadata"]["annotations"][SELECTED_NODE] == node {
                continue;
            }
            let ns = claim["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = claim["metadata"]["name"].as_str().unwrap_or("");
            let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
            if let Err(e) = client
                .patch(
                    &Resource::core("persistentvolumeclaims"),
                    Some(ns),
                    name,
                    Patch::Merge(patch),
                    None,
                    "default-scheduler",
                )
                .await
            {
                tracing::debug!(claim = %name, error = %e, "annotating the selected node");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> NodeInfo {
        let mut n = NodeInfo::default();
        n.set_node(&json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": zone}}}));
        n
    }

    fn pv(name: &str, size: &str, host: Option<&str>) -> Value {
        let mut pv = json!({"metadata": {"name": name, "labels": {"tier": "fast"}}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local"}, "status": {"phase": "Available"}});
        if let Some(h) = host {
            pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [h]}]}]}});
        }
        pv
    }

    fn pvc(size: &str) -> Value {
        json!({"metadata": {"name": "data", "namespace": "default", "uid": "u1"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn smallest_fitting_volume_wins() {
        let pvs = vec![
            pv("big", "10Gi", None),
            pv("small", "2Gi", None),
            pv("tiny", "500Mi", None),
        ];
        assert_eq!(
            best_volume(&pvc("1Gi"), &pvs, None).unwrap()["metadata"]["name"],
            "small"
        );
        assert!(best_volume(&pvc("20Gi"), &pvs, None).is_none());
        let mut claim = pvc("1Gi");
        claim["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert!(best_volume(&claim, &pvs, None).is_none(), "access modes");
        let mut claim = pvc("1Gi");
        claim["spec"]["storageClassName"] = json!("other");
        assert!(best_volume(&claim, &pvs, None).is_none(), "class");
        let mut claim = pvc("1Gi");
        claim["spec"]["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert!(best_volume(&claim, &pvs, None).is_none(), "selector");
        let mut claim = pvc("1Gi");
        claim["spec"]["volumeMode"] = json!("Block");
        assert!(best_volume(&claim, &pvs, None).is_none(), "volume mode");
    }

    #[test]
    fn bound_and_prebound_volumes_are_respected() {
        let mut taken = pv("taken", "1Gi", None);
        taken["spec"]["claimRef"] = json!({"namespace": "default", "name": "other", "uid": "u2"});
        taken["status"]["phase"] = json!("Bound");
        let mut mine = pv("mine", "5Gi", None);
        mine["spec"]["claimRef"] = json!({"namespace": "default", "name": "data"});
        let pvs = vec![taken, pv("free", "1Gi", None), mine];
        assert_eq!(
            best_volume(&pvc("1Gi"), &pvs, None).unwrap()["metadata"]["name"],
            "mine"
        );
    }

    #[test]
    fn node_affinity_picks_the_volume_of_the_node() {
        let pvs = vec![pv("on-a", "1Gi", Some("a")), pv("on-b", "1Gi", Some("b"))];
        let b = node("b", "z");
        assert_eq!(
            best_volume(&pvc("1Gi"), &pvs, Some(&b)).unwrap()["metadata"]["name"],
            "on-b"
        );
        assert!(!volume_allows_node(&pvs[0], &b));
        let needs = VolumeNeeds {
            needs: vec![ClaimNeed::Bound(pvs[0].clone())],
            volumes: vec![],
        };
        assert_eq!(needs.filter(&b).as_deref(), Some(AFFINITY_CONFLICT));
        assert_eq!(needs.filter(&node("a", "z")), None);
        let delayed = VolumeNeeds {
            needs: vec![ClaimNeed::Delayed {
                claim: pvc("1Gi"),
                provisioned: false,
            }],
            volumes: vec![pvs[0].clone()],
        };
        assert_eq!(delayed.filter(&b).as_deref(), Some(NO_VOLUME_TO_BIND));
        assert_eq!(delayed.filter(&node("a", "z")), None);
    }
}
