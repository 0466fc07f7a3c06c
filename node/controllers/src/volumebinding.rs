//! The PersistentVolume binder (upstream's `persistentvolume-binder` controller): binds claims to
//! matching Available volumes, smallest fitting first, and runs the volume lifecycle.
//!
//! Binding is two writes, volume first as upstream: the PV gets `spec.claimRef` (and
//! `pv.kubernetes.io/bound-by-controller`) then status Bound; the claim gets `spec.volumeName`,
//! the `pv.kubernetes.io/bind-completed` / `bound-by-controller` annotations, then status Bound
//! with the volume's capacity and access modes. A claim whose StorageClass binds
//! `WaitForFirstConsumer` stays Pending (event `WaitForFirstConsumer`) until the scheduler
//! records the node of its first pod in `volume.kubernetes.io/selected-node`; then it binds a
//! volume whose node affinity allows that node. Classes with a real provisioner are left to
//! it (event `ExternalProvisioning`) — K3s's local-path provisioner is not built yet, so such
//! claims stay Pending. When a claim goes, its volume becomes Released (`Retain`) or is deleted
//! (`Delete`).

use crate::informer::{key_of, Informer, Queue};
use crate::selector::split_key;
use crate::{Ctx, Error};
use k3rs_client::{DeleteParams, Resource};
use k3rs_scheduler::cache::NodeInfo;
use k3rs_scheduler::volumes::{best_volume, claim_class, NO_PROVISIONER, SELECTED_NODE};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info_span, Instrument};

const MANAGER: &str = "persistentvolume-binder";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

fn pvs() -> Resource {
    Resource::core("persistentvolumes")
}

fn pvcs() -> Resource {
    Resource::core("persistentvolumeclaims")
}

#[derive(Clone)]
pub struct VolumeBindingController {
    ctx: Arc<Ctx>,
    volumes: Informer,
    classes: Informer,
    /// Keys: "claim:<ns>/<name>" and "volume:<name>".
    queue: Queue,
    /// (claim uid, reason) already reported, so a waiting claim gets one event.
    reported: Arc<Mutex<HashSet<(String, String)>>>,
}

fn phase(obj: &Value) -> &str {
    obj.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl VolumeBindingController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = VolumeBindingController {
            ctx: ctx.clone(),
            volumes: Informer::new(pvs()),
            classes: Informer::new(Resource::new("storage.k8s.io", "v1", "storageclasses")),
            queue: Queue::default(),
            reported: Arc::default(),
        };
        let m = me.clone();
        ctx.persistentvolumeclaims
            .on_change(Box::new(move |old, new| match (old, new) {
                (_, Some(c)) => m.queue.add(format!("claim:{}", key_of(c))),
                (Some(c), None) => {
                    if let Some(v) = c.pointer("/spec/volumeName").and_then(Value::as_str) {
                        m.queue.add(format!("volume:{v}"));
                    }
                }
                _ => {}
            }));
        let m = me.clone();
        me.volumes.on_change(Box::new(move |_, new| {
            if let Some(v) = new {
                m.queue.add(format!("volume:{}", key_of(v)));
                if v["spec"]["claimRef"].is_null() {
                    m.enqueue_pending_claims();
                }
            }
        }));
        me
    }

    fn enqueue_pending_claims(&self) {
        for c in self.ctx.persistentvolumeclaims.list(None) {
            if c.pointer("/spec/volumeName")
                .is_none_or(|v| v.as_str() == Some(""))
            {
                self.queue.add(format!("claim:{}", key_of(&c)));
            }
        }
    }

    pub async fn run(self) {
        for i in [&self.volumes, &self.classes] {
            i.spawn(self.ctx.client.clone());
        }
        for i in [&self.volumes, &self.classes] {
            i.wait_synced().await;
        }
        loop {
            let key = self.queue.pop().await;
            let (kind, rest) = key.split_once(':').unwrap_or(("", &key));
            let (ns, name) = split_key(rest);
            let span = if kind == "claim" {
                info_span!("reconcile", kind = "PersistentVolumeClaim", namespace = %ns, name = %name)
            } else {
                info_span!("reconcile", kind = "PersistentVolume", name = %name)
            };
            let result = if kind == "claim" {
                self.sync_claim(rest).instrument(span.clone()).await
            } else {
                self.sync_volume(rest).instrument(span.clone()).await
            };
            if let Err(e) = result {
                span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                self.queue.add_after(key, Duration::from_secs(1));
            }
        }
    }

    async fn report_once(&self, claim: &Value, reason: &str, message: &str) {
        let uid = claim["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let first = self
            .reported
            .lock()
            .map(|mut r| r.insert((uid, reason.to_string())))
            .unwrap_or(false);
        if first {
            self.ctx.recorder.normal(claim, reason, message, "").await;
        }
    }

    fn node_info(&self, name: &str) -> Option<NodeInfo> {
        let node = self.ctx.nodes.get(name)?;
        let mut info = NodeInfo::default();
        info.set_node(&node);
        Some(info)
    }

    async fn sync_claim(&self, key: &str) -> Result<(), Error> {
        let Some(claim) = self.ctx.persistentvolumeclaims.get(key) else {
            return Ok(());
        };
        if claim["metadata"]["deletionTimestamp"].is_string() {
            return Ok(());
        }
        let (ns, name) = split_key(key);
        let bound_volume = claim
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty());
        if let Some(volume) = bound_volume {
            // Bound (or pre-bound by the user): finish whatever half is missing.
            let Some(pv) = self.volumes.get(volume) else {
                if phase(&claim) == "Bound" {
                    self.set_claim_phase(ns, name, &claim, "Lost", None).await?;
                }
                return Ok(());
            };
            let claim_ref = &pv["spec"]["claimRef"];
            let ours = claim_ref["namespace"] == ns
                && claim_ref["name"] == name
                && (claim_ref["uid"].is_null() || claim_ref["uid"] == claim["metadata"]["uid"]);
            if claim_ref.is_null() || ours {
                return self.bind(&claim, &pv).await;
            }
            return Ok(());
        }
        let class_name = claim_class(&claim);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(class_name))
            .flatten();
        let delayed = class
            .as_ref()
            .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
        let selected = claim
            .pointer(&format!(
                "/metadata/annotations/{}",
                SELECTED_NODE.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .map(String::from);
        if phase(&claim) != "Pending" {
            self.set_claim_phase(ns, name, &claim, "Pending", None)
                .await?;
        }
        let node = match (&selected, delayed) {
            (None, true) => {
                self.report_once(
                    &claim,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await;
                return Ok(());
            }
            (Some(n), true) => match self.node_info(n) {
                Some(info) => Some(info),
                None => return Ok(()),
            },
            _ => None,
        };
        let volumes = self.volumes.list(None);
        if let Some(pv) = best_volume(&claim, &volumes, node.as_ref()) {
            return self.bind(&claim, pv).await;
        }
        match class
            .as_ref()
            .and_then(|c| c["provisioner"].as_str())
            .filter(|p| *p != NO_PROVISIONER)
        {
            Some(provisioner) => {
                let msg = format!("Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.");
                self.report_once(&claim, "ExternalProvisioning", &msg).await;
            }
            None if class_name.is_empty() => {
                self.report_once(
                    &claim,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
            }
            None => {
                let msg = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
                if class.is_none() {
                    self.report_once(&claim, "ProvisioningFailed", &msg).await;
                }
            }
        }
        Ok(())
    }

    /// Binds `claim` to `pv`: the volume side first, then the claim (upstream's order, so a
    /// crash in between leaves a volume that the next sync finishes binding).
    async fn bind(&self, claim: &Value, pv: &Value) -> Result<(), Error> {
        let ns = claim["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = claim["metadata"]["name"].as_str().unwrap_or("");
        let pv_name = pv["metadata"]["name"].as_str().unwrap_or("").to_string();
        let claim_ref = json!({
            "kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name,
            "uid": claim["metadata"]["uid"], "resourceVersion": claim["metadata"]["resourceVersion"],
        });
        let mut volume = pv.clone();
        let ref_matches = pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"];
        if !ref_matches {
            volume["spec"]["claimRef"] = claim_ref;
            if pv["spec"]["claimRef"].is_null() {
                volume["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
            }
            volume = self.write(&pvs(), None, &pv_name, volume, None).await?;
            self.volumes.observe(&volume);
        }
        if phase(&volume) != "Bound" {
            volume["status"] = json!({"phase": "Bound"});
            volume = self
                .write(&pvs(), None, &pv_name, volume, Some("status"))
                .await?;
            self.volumes.observe(&volume);
        }
        let mut c = claim.clone();
        let needs_spec = c["spec"]["volumeName"] != pv_name.as_str()
            || c["metadata"]["annotations"][BIND_COMPLETED] != "yes";
        if needs_spec {
            let by_controller = c["spec"]["volumeName"].as_str().is_none_or(str::is_empty);
            c["spec"]["volumeName"] = json!(pv_name);
            if !c["metadata"]["annotations"].is_object() {
                c["metadata"]["annotations"] = json!({});
            }
            c["metadata"]["annotations"][BIND_COMPLETED] = json!("yes");
            if by_controller {
                c["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
            }
            c = self.write(&pvcs(), Some(ns), name, c, None).await?;
            self.ctx.persistentvolumeclaims.observe(&c);
        }
        let capacity = volume["spec"]["capacity"].clone();
        let modes = volume["spec"]["accessModes"].clone();
        if phase(&c) != "Bound" || c["status"]["capacity"] != capacity {
            let status = json!({"phase": "Bound", "accessModes": modes, "capacity": capacity});
            self.set_claim_phase(ns, name, &c, "Bound", Some(status))
                .await?;
        }
        debug!(volume = %pv_name, "bound");
        Ok(())
    }

    async fn set_claim_phase(
        &self,
        ns: &str,
        name: &str,
        claim: &Value,
        phase: &str,
        status: Option<Value>,
    ) -> Result<(), Error> {
        let mut c = claim.clone();
        c["status"] = status.unwrap_or_else(|| json!({"phase": phase}));
        let written = self
            .write(&pvcs(), Some(ns), name, c, Some("status"))
            .await?;
        self.ctx.persistentvolumeclaims.observe(&written);
        Ok(())
    }

    async fn write(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        sub: Option<&str>,
    ) -> Result<Value, Error> {
        self.ctx
            .client
            .replace(r, ns, name, obj, sub, MANAGER)
            .await
            .map_err(|e| Error::Api("binding a volume", e))
    }

    async fn sync_volume(&self, name: &str) -> Result<(), Error> {
        let Some(pv) = self.volumes.get(name) else {
            return Ok(());
        };
        if pv["metadata"]["deletionTimestamp"].is_string() {
            return Ok(());
        }
        let claim_ref = &pv["spec"]["claimRef"];
        if claim_ref.is_null() {
            if phase(&pv) != "Available" {
                self.set_volume_phase(&pv, "Available").await?;
            }
            return Ok(());
        }
        let key = format!(
            "{}/{}",
            claim_ref["namespace"].as_str().unwrap_or(""),
            claim_ref["name"].as_str().unwrap_or("")
        );
        let claim = self.ctx.persistentvolumeclaims.get(&key);
        let claim_present = claim.as_ref().is_some_and(|c| {
            claim_ref["uid"].is_null() || c["metadata"]["uid"] == claim_ref["uid"]
        });
        if claim_present {
            // Pre-bound volumes wait for their claim; bound ones are finished from the claim side.
            self.queue.add(format!("claim:{key}"));
            return Ok(());
        }
        if claim_ref["uid"].is_null() {
            // Pre-bound to a claim that does not exist yet.
            if phase(&pv) != "Available" {
                self.set_volume_phase(&pv, "Available").await?;
            }
            return Ok(());
        }
        // The claim is gone: reclaim.
        match pv["spec"]["persistentVolumeReclaimPolicy"]
            .as_str()
            .unwrap_or("Retain")
        {
            "Delete" => {
                match self
                    .ctx
                    .client
                    .delete(&pvs(), None, name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::Api("deleting a released volume", e)),
                }
            }
            _ => {
                if phase(&pv) != "Released" {
                    self.set_volume_phase(&pv, "Released").await?;
                }
            }
        }
        Ok(())
    }

    async fn set_volume_phase(&self, pv: &Value, phase: &str) -> Result<(), Error> {
        let name = pv["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut v = pv.clone();
        v["status"] = json!({"phase": phase});
        let written = self.write(&pvs(), None, &name, v, Some("status")).await?;
        self.volumes.observe(&written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3rs_client::Client;

    async fn wait_for(
        client: &Arc<dyn Client>,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        for _ in 0..200 {
            if let Ok(v) = client.get(r, ns, name).await {
                if check(&v) {
                    return v;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} never reached the expected state");
    }

    fn pv(name: &str, size: &str, policy: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": policy, "hostPath": {"path": "/tmp/x"}}})
    }

    #[tokio::test]
    async fn claims_bind_the_smallest_volume_and_release_it() {
        let client = k3rs_apiserver::local_client::LocalClient::in_memory()
            .await
            .unwrap();
        let ctx = Ctx::new(client.clone());
        let c = VolumeBindingController::new(ctx.clone());
        for i in [&ctx.persistentvolumeclaims, &ctx.nodes] {
            i.spawn(client.clone());
        }
        tokio::spawn(c.run());
        for v in [
            pv("big", "10Gi", "Retain"),
            pv("small", "2Gi", "Retain"),
            pv("gone", "1Gi", "Delete"),
        ] {
            client.create(&pvs(), None, v, "test").await.unwrap();
        }
        wait_for(&client, &pvs(), None, "small", |v| phase(v) == "Available").await;
        let claim = |name: &str, size: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                    "resources": {"requests": {"storage": size}}}})
        };
        client
            .create(&pvcs(), Some("default"), claim("data", "1500Mi"), "test")
            .await
            .unwrap();
        let bound = wait_for(&client, &pvcs(), Some("default"), "data", |c| {
            phase(c) == "Bound"
        })
        .await;
        assert_eq!(bound["spec"]["volumeName"], "small");
        assert_eq!(bound["metadata"]["annotations"][BIND_COMPLETED], "yes");
        assert_eq!(bound["status"]["capacity"]["storage"], "2Gi");
        let pv = wait_for(&client, &pvs(), None, "small", |v| phase(v) == "Bound").await;
        assert_eq!(pv["spec"]["claimRef"]["name"], "data");
        assert_eq!(pv["metadata"]["annotations"][BOUND_BY_CONTROLLER], "yes");
        client
            .delete(&pvcs(), Some("default"), "data", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(&client, &pvs(), None, "small", |v| phase(v) == "Released").await;

        client
            .create(&pvcs(), Some("default"), claim("tmp", "1Gi"), "test")
            .await
            .unwrap();
        wait_for(&client, &pvcs(), Some("default"), "tmp", |c| {
            c["spec"]["volumeName"] == "gone"
        })
        .await;
        client
            .delete(&pvcs(), Some("default"), "tmp", &DeleteParams::default())
            .await
            .unwrap();
        for _ in 0..200 {
            if client.get(&pvs(), None, "gone").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the Delete volume outlived its claim");
    }
}
