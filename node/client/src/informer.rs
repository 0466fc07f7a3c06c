//! A watch-fed cache of one resource type (a shared informer) and a de-duplicating work queue.

use crate::{Client, ListParams, Resource, WatchEvent};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::warn;

/// Called with (old, new): added = (None, Some), modified = (Some, Some), deleted = (Some, None).
pub type Handler = Box<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

pub fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    match m["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", m["name"].as_str().unwrap_or("")),
        _ => m["name"].as_str().unwrap_or("").to_string(),
    }
}

fn rv(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

#[derive(Clone)]
pub struct Informer {
    pub resource: Resource,
    cache: Arc<RwLock<HashMap<String, Value>>>,
    handlers: Arc<RwLock<Vec<Handler>>>,
    synced: Arc<(Mutex<bool>, Notify)>,
}

impl Informer {
    pub fn new(resource: Resource) -> Self {
        Informer {
            resource,
            cache: Arc::default(),
            handlers: Arc::default(),
            synced: Arc::new((Mutex::new(false), Notify::new())),
        }
    }

    pub fn on_change(&self, h: Handler) {
        if let Ok(mut hs) = self.handlers.write() {
            hs.push(h);
        }
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.cache.read().ok()?.get(key).cloned()
    }

    /// Objects in a namespace (None = all).
    pub fn list(&self, namespace: Option<&str>) -> Vec<Value> {
        let Ok(c) = self.cache.read() else {
            return Vec::new();
        };
        c.values()
            .filter(|o| namespace.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns)))
            .cloned()
            .collect()
    }

    /// Takes in an object this process just wrote, so the next reconcile does not act on the
    /// older copy before the watch catches up (ignored if the cache already has something newer).
    pub fn observe(&self, obj: &Value) {
        if let Ok(mut c) = self.cache.write() {
            let key = key_of(obj);
            let newer = match (c.get(&key).and_then(rv), rv(obj)) {
                (Some(have), Some(got)) => got > have,
                _ => true,
            };
            if newer {
                c.insert(key, obj.clone());
            }
        }
    }

    pub async fn wait_synced(&self) {
        loop {
            let notified = self.synced.1.notified();
            if self.synced.0.lock().map(|s| *s).unwrap_or(false) {
                return;
            }
            notified.await;
        }
    }

    fn apply(&self, ev: WatchEvent) {
        let (old, new) = match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let key = key_of(&o);
                let Ok(mut c) = self.cache.write() else {
                    return;
                };
                let old = c.get(&key).cloned();
                if let (Some(have), Some(got)) = (old.as_ref().and_then(rv), rv(&o)) {
                    if got < have {
                        return;
                    }
                }
                c.insert(key, o.clone());
                (old, Some(o))
            }
            WatchEvent::Deleted(o) => {
                let key = key_of(&o);
                let old = self.cache.write().ok().and_then(|mut c| c.remove(&key));
                (Some(old.unwrap_or(o)), None)
            }
            _ => return,
        };
        if let Ok(hs) = self.handlers.read() {
            for h in hs.iter() {
                h(old.as_ref(), new.as_ref());
            }
        }
    }

    /// Lists and watches forever on a task of its own (see [`Informer::run`]).
    pub fn spawn(&self, client: Arc<dyn Client>) {
        tokio::spawn(self.clone().run(client));
    }

    /// Lists and watches forever; after a failed watch, re-lists and reports what vanished as
    /// deleted. Dropping the future stops the watch (a controller group that loses its lease).
    pub async fn run(self, client: Arc<dyn Client>) {
        loop {
            if let Err(e) = self.list_watch(&client).await {
                warn!(resource = %self.resource.plural, error = %e, "watch failed; re-listing");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn list_watch(&self, client: &Arc<dyn Client>) -> Result<(), crate::ClientError> {
        let list = client
            .list(&self.resource, None, &ListParams::default())
            .await?;
        let mut stream = client
            .watch(
                &self.resource,
                None,
                &ListParams {
                    resource_version: Some(list.resource_version.clone()),
                    allow_bookmarks: true,
                    ..Default::default()
                },
            )
            .await?;
        let present: HashSet<String> = list.items.iter().map(key_of).collect();
        let gone: Vec<Value> = self
            .cache
            .read()
            .map(|c| {
                c.iter()
                    .filter(|(k, _)| !present.contains(*k))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        for o in gone {
            self.apply(WatchEvent::Deleted(o));
        }
        for o in list.items {
            self.apply(WatchEvent::Modified(o));
        }
        if let Ok(mut s) = self.synced.0.lock() {
            *s = true;
        }
        self.synced.1.notify_waiters();
        while let Some(ev) = stream.next().await {
            if let WatchEvent::Error(e) = ev {
                return Err(e);
            }
            self.apply(ev);
        }
        Ok(())
    }
}

/// Waiting keys in order, and the same as a set.
type QueueState = (VecDeque<String>, HashSet<String>);

/// Keys to reconcile; a key already waiting is not added twice.
#[derive(Clone, Default)]
pub struct Queue {
    inner: Arc<(Mutex<QueueState>, Notify)>,
}

impl Queue {
    pub fn add(&self, key: String) {
        if let Ok(mut q) = self.inner.0.lock() {
            if q.1.insert(key.clone()) {
                q.0.push_back(key);
            }
        }
        self.inner.1.notify_one();
    }

    pub fn add_after(&self, key: String, after: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            q.add(key);
        });
    }

    pub async fn pop(&self) -> String {
        loop {
            let notified = self.inner.1.notified();
            if let Ok(mut q) = self.inner.0.lock() {
                if let Some(k) = q.0.pop_front() {
                    q.1.remove(&k);
                    return k;
                }
            }
            notified.await;
        }
    }
}

/// Pending creations and deletions a controller made and has not yet seen in its pod watch
/// (upstream's ControllerExpectations): while unsatisfied, it does not create or delete again.
#[derive(Clone, Default)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, Expected>>>,
}

/// (creations still to see, deletions still to see, when set).
type Expected = (i64, HashSet<String>, std::time::Instant);

const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

impl Expectations {
    pub fn satisfied(&self, key: &str) -> bool {
        let Ok(m) = self.inner.lock() else {
            return true;
        };
        match m.get(key) {
            None => true,
            Some((adds, dels, at)) => {
                (*adds <= 0 && dels.is_empty()) || at.elapsed() > EXPECTATIONS_TTL
            }
        }
    }

    pub fn expect(&self, key: &str, adds: i64, dels: HashSet<String>) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(key.to_string(), (adds, dels, std::time::Instant::now()));
        }
    }

    pub fn creation_observed(&self, key: &str) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(e) = m.get_mut(key) {
                e.0 -= 1;
            }
        }
    }

    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(e) = m.get_mut(key) {
                e.1.remove(pod);
            }
        }
    }

    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(key);
        }
    }
}
