//! In-process lifecycle controllers that API semantics depend on: the garbage collector
//! (owner references with background, foreground and orphan propagation) and namespace
//! deletion (empty the namespace, then remove it).

use crate::meta;
use crate::objects::{self, DeleteOptions, Query, Target};
use crate::state::Api;
use crate::status::ApiError;
use k3rs_resources::ResourceType;
use k3rs_store::{EventKind, KeyValue};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info_span, warn, Instrument};

/// Live objects by uid, and dependents by owner uid.
#[derive(Default)]
struct OwnerIndex {
    keys_by_uid: HashMap<String, String>,
    dependents: HashMap<String, HashSet<String>>,
    owners_of: HashMap<String, Vec<String>>,
}

impl OwnerIndex {
    fn add(&mut self, key: &str, obj: &Value) {
        self.remove(key);
        if let Some(uid) = meta::uid(obj) {
            self.keys_by_uid.insert(uid.to_string(), key.to_string());
        }
        let owners: Vec<String> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["uid"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for o in &owners {
            self.dependents
                .entry(o.clone())
                .or_default()
                .insert(key.to_string());
        }
        if !owners.is_empty() {
            self.owners_of.insert(key.to_string(), owners);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(owners) = self.owners_of.remove(key) {
            for o in owners {
                if let Some(set) = self.dependents.get_mut(&o) {
                    set.remove(key);
                    if set.is_empty() {
                        self.dependents.remove(&o);
                    }
                }
            }
        }
    }

    fn forget_uid(&mut self, uid: &str) {
        self.keys_by_uid.remove(uid);
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn alive(&self, uid: &str) -> bool {
        self.keys_by_uid.contains_key(uid)
    }
}

/// Resolves a store key to its resource type, namespace and name.
fn parse_key(api: &Api, key: &str) -> Option<(Arc<ResourceType>, Option<String>, String)> {
    let rest = key.strip_prefix("/registry/")?;
    let mut parts = rest.splitn(4, '/');
    let group = parts.next()?;
    let plural = parts.next()?;
    let group = if group == "core" { "" } else { group };
    let rt = api.resources.read().ok()?.find_any_version(group, plural)?;
    let a = parts.next()?.to_string();
    match parts.next() {
        Some(name) if rt.namespaced => Some((rt, Some(a), name.to_string())),
        None if !rt.namespaced => Some((rt, None, a)),
        _ => None,
    }
}

async fn delete_key(api: &Api, key: &str, policy: &str) -> Result<(), ApiError> {
    let Some((rt, ns, name)) = parse_key(api, key) else {
        return Ok(());
    };
    let t = Target {
        rt: &rt,
        namespace: ns.as_deref(),
        name: Some(&name),
    };
    let opts = DeleteOptions {
        propagation: Some(policy.into()),
        ..Default::default()
    };
    match objects::delete(api, &t, &name, &opts, &Query::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Rewrites an object through the normal update path (so finalizer removal may complete a delete).
async fn modify(api: &Api, key: &str, f: impl Fn(&mut Value)) -> Result<(), ApiError> {
    let Some((rt, ns, name)) = parse_key(api, key) else {
        return Ok(());
    };
    let t = Target {
        rt: &rt,
        namespace: ns.as_deref(),
        name: Some(&name),
    };
    for _ in 0..5 {
        let Some(kv) = api.store.get(key).await? else {
            return Ok(());
        };
        let old = meta::decode_from_store(&kv.value, kv.mod_revision);
        let mut new = old.clone();
        f(&mut new);
        objects::set_type_meta(&rt, &mut new);
        let mut q = Query::new();
        q.insert("fieldManager".into(), "garbage-collector".into());
        match objects::write_update(api, &t, &old, kv.mod_revision, new, objects::Part::Main, &q)
            .await
        {
            Err(e) if e.code == 409 => continue,
            Err(e) if e.code == 404 => return Ok(()),
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}

fn remove_finalizer(obj: &mut Value, name: &str) {
    let list: Vec<String> = meta::finalizers(obj)
        .into_iter()
        .filter(|f| f != name)
        .collect();
    meta::set_finalizers(obj, list);
}

pub struct Lifecycle {
    api: Arc<Api>,
    namespaces_in_progress: Mutex<HashSet<String>>,
}

impl Lifecycle {
    pub fn new(api: Arc<Api>) -> Arc<Self> {
        Arc::new(Lifecycle {
            api,
            namespaces_in_progress: Mutex::new(HashSet::new()),
        })
    }

    /// Runs forever, restarting from a fresh list if its watch breaks.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self
                .clone()
                .run_once()
                .instrument(info_span!("lifecycle"))
                .await
            {
                warn!(error = %e, "lifecycle controller restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn run_once(self: Arc<Self>) -> Result<(), ApiError> {
        let api = &self.api;
        let list = api.store.list("/registry/", None, None, None).await?;
        let mut index = OwnerIndex::default();
        let mut pending = Vec::new();
        for kv in &list.items {
            let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
            index.add(&kv.key, &obj);
            if meta::is_deleting(&obj) {
                pending.push(kv.clone());
            }
        }
        // Dependents whose owners are all gone (e.g. deleted while the server was down).
        let orphans: Vec<String> = index
            .owners_of
            .iter()
            .filter(|(_, owners)| owners.iter().all(|o| !index.alive(o)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphans {
            delete_key(api, &key, "Background").await?;
        }
        for kv in pending {
            self.clone().handle_deleting(&index, &kv).await?;
        }
        for kv in list
            .items
            .iter()
            .filter(|kv| kv.key.starts_with(NAMESPACES))
        {
            let ns = &kv.key[NAMESPACES.len()..];
            self.ensure_namespace_defaults(ns).await?;
        }
        let mut watcher = api.store.watch("/registry/", list.revision).await?;
        while let Some(ev) = watcher.next().await {
            let obj = meta::decode_from_store(&ev.kv.value, ev.kv.mod_revision);
            match ev.kind {
                EventKind::Delete => {
                    // Someone deleted a namespace default: put it back while the namespace lives.
                    if let Some(ns) = namespace_default_owner(&ev.kv.key) {
                        self.ensure_namespace_defaults(ns).await?;
                    }
                    let owners = index.owners_of.get(&ev.kv.key).cloned().unwrap_or_default();
                    index.remove(&ev.kv.key);
                    self.finish_foreground(&index, &owners).await?;
                    if let Some(uid) = meta::uid(&obj) {
                        index.forget_uid(uid);
                        self.owner_gone(&index, uid).await?;
                    }
                }
                _ => {
                    if ev.kind == EventKind::Create {
                        if let Some(ns) = ev.kv.key.strip_prefix(NAMESPACES) {
                            self.ensure_namespace_defaults(ns).await?;
                        }
                    }
                    index.add(&ev.kv.key, &obj);
                    if meta::is_deleting(&obj) {
                        self.clone().handle_deleting(&index, &ev.kv).await?;
                    }
                    // A dependent of an owner that no longer exists.
                    if let Some(owners) = index.owners_of.get(&ev.kv.key) {
                        if ev.kind == EventKind::Create && owners.iter().all(|o| !index.alive(o)) {
                            delete_key(api, &ev.kv.key, "Background").await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// An owner was deleted: dependents with no other live owner go too; others drop the reference.
    async fn owner_gone(&self, index: &OwnerIndex, uid: &str) -> Result<(), ApiError> {
        for key in index.dependents_of(uid) {
            let others_alive = index
                .owners_of
                .get(&key)
                .is_some_and(|os| os.iter().any(|o| o != uid && index.alive(o)));
            if others_alive {
                modify(&self.api, &key, |o| drop_owner_ref(o, uid)).await?;
            } else {
                debug!(%key, "garbage collecting dependent");
                delete_key(&self.api, &key, "Background").await?;
            }
        }
        Ok(())
    }

    async fn handle_deleting(
        self: Arc<Self>,
        index: &OwnerIndex,
        kv: &KeyValue,
    ) -> Result<(), ApiError> {
        let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
        let finalizers = meta::finalizers(&obj);
        let uid = meta::uid(&obj).unwrap_or_default().to_string();
        if finalizers.iter().any(|f| f == "orphan") {
            for key in index.dependents_of(&uid) {
                modify(&self.api, &key, |o| drop_owner_ref(o, &uid)).await?;
            }
            modify(&self.api, &kv.key, |o| remove_finalizer(o, "orphan")).await?;
        }
        if finalizers.iter().any(|f| f == "foregroundDeletion") {
            let deps = index.dependents_of(&uid);
            if deps.is_empty() {
                modify(&self.api, &kv.key, |o| {
                    remove_finalizer(o, "foregroundDeletion")
                })
                .await?;
            } else {
                for key in deps {
                    delete_key(&self.api, &key, "Foreground").await?;
                }
            }
        }
        if kv.key.starts_with("/registry/core/namespaces/") {
            let name = meta::name(&obj).unwrap_or_default().to_string();
            let fresh = self
                .namespaces_in_progress
                .lock()
                .map(|mut s| s.insert(name.clone()))
                .unwrap_or(false);
            if fresh {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me
                        .finalize_namespace(&name)
                        .instrument(info_span!("namespace", %name))
                        .await
                    {
                        warn!(error = %e, "namespace deletion failed");
                    }
                    if let Ok(mut s) = me.namespaces_in_progress.lock() {
                        s.remove(&name);
                    }
                });
            }
        }
        Ok(())
    }

    /// Every live namespace has a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap
    /// (upstream's ServiceAccount controller and root-CA publisher). Writes only what is missing.
    async fn ensure_namespace_defaults(&self, ns: &str) -> Result<(), ApiError> {
        let api = &self.api;
        match api.store.get(&format!("{NAMESPACES}{ns}")).await? {
            Some(kv)
                if !meta::is_deleting(&meta::decode_from_store(&kv.value, kv.mod_revision)) => {}
            _ => return Ok(()),
        }
        let wanted = [
            (
                "",
                "ServiceAccount",
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}),
            ),
            (
                "",
                "ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                       "data": {"ca.crt": api.cluster_ca_pem}}),
            ),
        ];
        for (group, kind, obj) in wanted {
            let Some(rt) = api.by_kind(group, kind) else {
                continue;
            };
            let name = meta::name(&obj).unwrap_or_default().to_string();
            if api
                .store
                .get(&rt.storage_key(Some(ns), &name))
                .await?
                .is_some()
            {
                continue;
            }
            let t = Target {
                rt: &rt,
                namespace: Some(ns),
                name: None,
            };
            let mut q = Query::new();
            q.insert("fieldManager".into(), "kube-controller-manager".into());
            match objects::create(api, &t, obj, &q).await {
                Ok(_) => {}
                // Lost a race, or the namespace started terminating: both are fine.
                Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After a dependent goes, owners waiting in foreground deletion may have none left.
    async fn finish_foreground(
        &self,
        index: &OwnerIndex,
        owners: &[String],
    ) -> Result<(), ApiError> {
        for uid in owners {
            if !index.dependents_of(uid).is_empty() {
                continue;
            }
            let Some(key) = index.keys_by_uid.get(uid).cloned() else {
                continue;
            };
            let Some(kv) = self.api.store.get(&key).await? else {
                continue;
            };
            let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
            if meta::is_deleting(&obj)
                && meta::finalizers(&obj)
                    .iter()
                    .any(|f| f == "foregroundDeletion")
            {
                modify(&self.api, &key, |o| {
                    remove_finalizer(o, "foregroundDeletion")
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Deletes everything in a terminating namespace, then the namespace itself.
    async fn finalize_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let api = &self.api;
        for round in 0..600 {
            let types = api
                .resources
                .read()
                .map(|i| i.stored_resources())
                .unwrap_or_default();
            let mut remaining = 0usize;
            for rt in types.iter().filter(|t| t.namespaced) {
                let prefix = format!("{}{}/", rt.storage_prefix(), ns);
                let items = api.store.list(&prefix, None, None, None).await?.items;
                remaining += items.len();
                for kv in items {
                    let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
                    if !meta::is_deleting(&obj) || round > 0 && rt.kind == "Pod" {
                        let opts = DeleteOptions {
                            propagation: Some("Background".into()),
                            grace_period: if round > 30 { Some(0) } else { None },
                            ..Default::default()
                        };
                        let name = meta::name(&obj).unwrap_or_default().to_string();
                        let t = Target {
                            rt,
                            namespace: Some(ns),
                            name: Some(&name),
                        };
                        if let Err(e) = objects::delete(api, &t, &name, &opts, &Query::new()).await
                        {
                            if e.code != 404 {
                                warn!(error = %e, %name, "deleting namespace content");
                            }
                        }
                    }
                }
            }
            if remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(if round < 10 { 100 } else { 1000 })).await;
        }
        let key = format!("/registry/core/namespaces/{ns}");
        modify(api, &key, |o| {
            if let Some(list) = o
                .pointer_mut("/spec/finalizers")
                .and_then(Value::as_array_mut)
            {
                list.retain(|f| f != "kubernetes");
            }
            o["status"]["phase"] = json!("Terminating");
        })
        .await?;
        // The object goes once its own metadata finalizers are gone too.
        if let Some(kv) = api.store.get(&key).await? {
            let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
            let spec_empty = obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty());
            if spec_empty && meta::finalizers(&obj).is_empty() {
                match api.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(_) | Err(k3rs_store::Error::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

const NAMESPACES: &str = "/registry/core/namespaces/";
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// The namespace whose default object this key is (`default` SA or root CA ConfigMap), if any.
fn namespace_default_owner(key: &str) -> Option<&str> {
    if let Some(rest) = key.strip_prefix("/registry/core/serviceaccounts/") {
        return rest.strip_suffix("/default");
    }
    key.strip_prefix("/registry/core/configmaps/")?
        .strip_suffix(&format!("/{ROOT_CA_CONFIGMAP}"))
}

fn drop_owner_ref(obj: &mut Value, uid: &str) {
    if let Some(list) = obj
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    {
        list.retain(|o| o["uid"].as_str() != Some(uid));
        if list.is_empty() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("ownerReferences");
            }
        }
    }
}
