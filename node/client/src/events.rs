//! core/v1 Events as the upstream event recorder writes them: one Event per (object, reason,
//! message), later repeats bump `count` and `lastTimestamp` on it. Used by every component.

use crate::{Client, Patch, Resource};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::debug;

/// (involved uid, reason, message).
type EventKey = (String, String, String);
/// (event namespace, event name, count).
type Recorded = (String, String, i64);

#[derive(Clone)]
pub struct Recorder {
    client: Arc<dyn Client>,
    component: String,
    /// (involved uid, reason, message) → (event namespace, name, count).
    seen: Arc<Mutex<HashMap<EventKey, Recorded>>>,
}

impl Recorder {
    pub fn new(client: Arc<dyn Client>, component: &str) -> Self {
        Recorder {
            client,
            component: component.into(),
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub async fn warning(&self, obj: &Value, reason: &str, message: &str, action: &str) {
        self.record(obj, "Warning", reason, message, action).await;
    }

    pub async fn normal(&self, obj: &Value, reason: &str, message: &str, action: &str) {
        self.record(obj, "Normal", reason, message, action).await;
    }

    async fn record(&self, obj: &Value, type_: &str, reason: &str, message: &str, action: &str) {
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
        let uid = meta["uid"].as_str().unwrap_or("").to_string();
        let now = chrono::Utc::now();
        let ts = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let key = (uid, reason.to_string(), message.to_string());
        let prior = self.seen.lock().ok().and_then(|m| m.get(&key).cloned());
        let events = Resource::core("events");
        if let Some((ens, ename, count)) = prior {
            let patch = json!({"count": count + 1, "lastTimestamp": ts});
            if self
                .client
                .patch(
                    &events,
                    Some(&ens),
                    &ename,
                    Patch::Merge(patch),
                    None,
                    &self.component,
                )
                .await
                .is_ok()
            {
                if let Ok(mut m) = self.seen.lock() {
                    m.insert(key, (ens, ename, count + 1));
                }
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            meta["name"].as_str().unwrap_or(""),
            now.timestamp_nanos_opt().unwrap_or(0)
        );
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": obj["apiVersion"].as_str().unwrap_or("v1"),
                "kind": obj["kind"].as_str().unwrap_or("Pod"),
                "namespace": ns, "name": meta["name"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
            },
            "reason": reason, "message": message, "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.component,
            "action": action,
            "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
            "eventTime": null,
        });
        match self
            .client
            .create(&events, Some(&ns), event, &self.component)
            .await
        {
            Ok(_) => {
                if let Ok(mut m) = self.seen.lock() {
                    if m.len() > 4096 {
                        m.clear();
                    }
                    m.insert(key, (ns, name, 1));
                }
            }
            Err(e) => debug!(error = %e, "recording event"),
        }
    }
}
