//! What the pod-to-pod plugins (inter-pod affinity, topology spread, preemption) need to know
//! about a pod that is already on a node: identity, labels, priority and its own affinity terms.
//! Shared behind an `Arc` between the pod's `PodInfo` and its node's index, so assigning a pod
//! copies nothing.

use crate::interpod::Affinity;
use serde_json::Value;

#[derive(Debug, PartialEq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `metadata.labels` (an object, or null).
    pub labels: Value,
    pub priority: i64,
    /// `metadata.deletionTimestamp` is set: on its way out (topology spread does not count it;
    /// preemption waits for it instead of evicting more).
    pub terminating: bool,
    /// Only pods with pod (anti-)affinity have it, so most pods carry nothing here.
    pub affinity: Option<Box<Affinity>>,
}

impl PodMeta {
    pub fn from_pod(pod: &Value) -> PodMeta {
        let metadata = &pod["metadata"];
        let namespace = metadata["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let labels = if metadata["labels"].is_object() {
            metadata["labels"].clone()
        } else {
            Value::Null
        };
        PodMeta {
            affinity: Affinity::from_pod(pod, &namespace, &labels).map(Box::new),
            name: metadata["name"].as_str().unwrap_or("").to_string(),
            uid: metadata["uid"].as_str().unwrap_or("").to_string(),
            priority: pod["spec"]["priority"].as_i64().unwrap_or(0),
            terminating: !metadata["deletionTimestamp"].is_null(),
            namespace,
            labels,
        }
    }

    /// "namespace/name", the scheduler's key for a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A label's value, if the pod has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(Value::as_str)
    }
}
