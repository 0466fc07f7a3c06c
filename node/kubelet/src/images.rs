//! Image pulls for pods: credentials from the pod's `imagePullSecrets` and its ServiceAccount's,
//! back-off between failed pulls (ImagePullBackOff), and periodic image garbage collection.

use base64::Engine;
use k3rs_client::{Client, Resource};
use k3rs_images::gc::{DiskUsageSource, GcPolicy};
use k3rs_images::keyring::DockerKeyring;
use k3rs_images::{Auth, ImageStore};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// Upstream's image back-off: 10 s doubling up to 300 s.
const INITIAL_PULL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_PULL_BACKOFF: Duration = Duration::from_secs(300);
/// How often image GC looks at disk usage without a pull prompting it (upstream: 5 minutes).
const GC_PERIOD: Duration = Duration::from_secs(300);

/// The secret names a pod may pull with: its own `imagePullSecrets`, then its ServiceAccount's
/// (upstream's admission plugin copies those into the pod; reading them here has the same effect
/// for pods created before the account got them).
async fn pull_secret_names(client: &dyn Client, pod: &Value) -> Vec<String> {
    let mut names: Vec<String> = pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    if let Ok(account) = client
        .get(&Resource::core("serviceaccounts"), Some(ns), sa)
        .await
    {
        for s in account["imagePullSecrets"].as_array().into_iter().flatten() {
            if let Some(n) = s["name"].as_str() {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
            }
        }
    }
    names
}

/// The credentials the pod's pull secrets give for `image`; `None` when no secret matches (then
/// `registries.yaml` configs apply). Missing or malformed secrets are skipped, as upstream.
pub async fn pull_credentials(client: &dyn Client, pod: &Value, image: &str) -> Option<Auth> {
    let names = pull_secret_names(client, pod).await;
    if names.is_empty() {
        return None;
    }
    let reference: oci_reference::Parts = oci_reference::parse(image)?;
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut keyring = DockerKeyring::default();
    for name in names {
        let secret = match client
            .get(&Resource::core("secrets"), Some(ns), &name)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!(secret = %name, error = %e, "image pull secret not readable");
                continue;
            }
        };
        let ty = secret["type"].as_str().unwrap_or("");
        let key = match ty {
            "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
            "kubernetes.io/dockercfg" => ".dockercfg",
            _ => continue,
        };
        let data = secret["data"][key]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        if !keyring.add_secret(ty, &data) {
            warn!(secret = %name, "image pull secret is not a docker config");
        }
    }
    keyring.lookup(&reference.registry, &reference.repository)
}

/// Splitting an image name into registry and repository like Docker.
mod oci_reference {
    pub struct Parts {
        pub registry: String,
        pub repository: String,
    }

    pub fn parse(image: &str) -> Option<Parts> {
        let whole = k3rs_images::normalize(image).ok()?;
        let (registry, rest) = whole.split_once('/')?;
        let name = rest.split_once('@').map(|(r, _)| r).unwrap_or(rest);
        let repository = match name.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => name,
        };
        Some(Parts {
            registry: registry.to_string(),
            repository: repository.to_string(),
        })
    }
}

struct BackoffEntry {
    until: Instant,
    delay: Duration,
    message: String,
}

/// Per pod and image: when the next pull may be tried, and the last failure.
#[derive(Default)]
pub struct PullBackoff {
    entries: Mutex<HashMap<(String, String), BackoffEntry>>,
}

impl PullBackoff {
    /// The last failure when `image` for pod `uid` is still backing off.
    pub fn waiting(&self, uid: &str, image: &str) -> Option<String> {
        let map = self.entries.lock().expect("pull backoff");
        map.get(&(uid.to_string(), image.to_string()))
            .filter(|e| e.until > Instant::now())
            .map(|e| e.message.clone())
    }

    /// Records a failed pull; the next waits twice as long as the last (10 s to 300 s).
    pub fn failed(&self, uid: &str, image: &str, message: String) {
        let mut map = self.entries.lock().expect("pull backoff");
        let key = (uid.to_string(), image.to_string());
        let delay = map
            .get(&key)
            .map(|e| (e.delay * 2).min(MAX_PULL_BACKOFF))
            .unwrap_or(INITIAL_PULL_BACKOFF);
        map.insert(
            key,
            BackoffEntry {
                until: Instant::now() + delay,
                delay,
                message,
            },
        );
    }

    pub fn succeeded(&self, uid: &str, image: &str) {
        let mut map = self.entries.lock().expect("pull backoff");
        map.remove(&(uid.to_string(), image.to_string()));
    }

    /// Forgets a deleted pod.
    pub fn forget_pod(&self, uid: &str) {
        let mut map = self.entries.lock().expect("pull backoff");
        map.retain(|(u, _), _| u != uid);
    }
}

/// Runs image GC every [`GC_PERIOD`] and whenever `kick` is notified (after pulls).
pub async fn gc_loop(
    images: ImageStore,
    policy: GcPolicy,
    disk: Arc<dyn DiskUsageSource>,
    kick: Arc<Notify>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GC_PERIOD) => {}
            _ = kick.notified() => {}
        }
        let (images, disk) = (images.clone(), disk.clone());
        match tokio::task::spawn_blocking(move || images.collect_garbage(policy, disk.as_ref()))
            .await
        {
            Ok(Ok(removed)) => debug!(removed = removed.len(), "image GC pass"),
            Ok(Err(e)) => warn!(error = %e, "image GC failed"),
            Err(e) => warn!(error = %e, "image GC task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_like_docker() {
        let p = oci_reference::parse("busybox").unwrap();
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        let p = oci_reference::parse("10.0.0.1:5000/team/app:1").unwrap();
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str()),
            ("10.0.0.1:5000", "team/app")
        );
        let p = oci_reference::parse(&format!("r.test/app@sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(p.repository, "app");
    }

    #[test]
    fn backoff_doubles_and_clears() {
        let b = PullBackoff::default();
        assert!(b.waiting("u", "i").is_none());
        b.failed("u", "i", "manifest unknown".into());
        assert_eq!(b.waiting("u", "i").as_deref(), Some("manifest unknown"));
        b.failed("u", "i", "again".into());
        let delay = b.entries.lock().unwrap()[&("u".to_string(), "i".to_string())].delay;
        assert_eq!(delay, Duration::from_secs(20));
        b.succeeded("u", "i");
        assert!(b.waiting("u", "i").is_none());
    }
}
