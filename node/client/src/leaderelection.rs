//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it:
//! a candidate takes the Lease when it is free or its holder stopped renewing for
//! `leaseDurationSeconds`, renews it every `retry_period`, and gives up leading when it could not
//! renew for `renew_deadline` (shorter than the lease, so the old leader has stopped before anyone
//! else may take over) or when it sees another holder.
//!
//! Expiry is judged on the candidate's own clock from when it last saw the Lease change
//! (client-go's `observedTime`), never from the `renewTime` another machine wrote, so clock skew
//! between servers cannot make two leaders. Times come from `tokio::time`, so tests can pause and
//! advance them.

use crate::{Client, ClientError, Resource};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// Which Lease, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    /// `holderIdentity`: unique per process (upstream: `<hostname>_<uuid>`).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// kube-scheduler's and kube-controller-manager's defaults: Lease `name` in kube-system,
    /// 15 s lease, 10 s renew deadline, renewals and retries every 2 s.
    pub fn new(name: &str, identity: &str) -> Self {
        ElectionConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

pub struct LeaderElector {
    client: Arc<dyn Client>,
    config: ElectionConfig,
    /// The Lease spec last seen and when (on our clock) it was first seen that way.
    observed: Option<(Value, Instant)>,
}

fn leases() -> Resource {
    Resource::new("coordination.k8s.io", "v1", "leases")
}

/// MicroTime, as Lease times are written.
fn micro_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

impl LeaderElector {
    pub fn new(client: Arc<dyn Client>, config: ElectionConfig) -> Self {
        LeaderElector {
            client,
            config,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// One attempt to take or renew the Lease: Ok(true) when we hold it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, ClientError> {
        let c = &self.config;
        let now = micro_now();
        let secs = c.lease_duration.as_secs().max(1);
        let current = match self
            .client
            .get(&leases(), Some(&c.namespace), &c.name)
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_not_found() => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": c.name, "namespace": c.namespace},
                    "spec": {"holderIdentity": c.identity, "leaseDurationSeconds": secs,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
                });
                return match self
                    .client
                    .create(&leases(), Some(&c.namespace), lease, &c.identity)
                    .await
                {
                    Ok(l) => {
                        self.observed = Some((l["spec"].clone(), Instant::now()));
                        Ok(true)
                    }
                    Err(e) if e.is_already_exists() => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let spec = current["spec"].clone();
        let seen_at = match &self.observed {
            Some((s, at)) if *s == spec => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((spec.clone(), at));
                at
            }
        };
        let holder = spec["holderIdentity"].as_str().unwrap_or("");
        let mine = holder == c.identity;
        let their_duration =
            Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(0));
        if !holder.is_empty() && !mine && seen_at + their_duration > Instant::now() {
            return Ok(false);
        }
        let mut lease = current.clone();
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
        lease["spec"] = json!({
            "holderIdentity": c.identity,
            "leaseDurationSeconds": secs,
            "acquireTime": if mine { spec["acquireTime"].clone() } else { json!(now) },
            "renewTime": now,
            "leaseTransitions": if mine { transitions } else { transitions + 1 },
        });
        match self
            .client
            .replace(
                &leases(),
                Some(&c.namespace),
                &c.name,
                lease,
                None,
                &c.identity,
            )
            .await
        {
            Ok(l) => {
                self.observed = Some((l["spec"].clone(), Instant::now()));
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews every retry period; returns once leadership is lost (another holder, or no
    /// successful renewal for the renew deadline).
    async fn keep_renewing(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    let holder = self
                        .observed
                        .as_ref()
                        .and_then(|(s, _)| s["holderIdentity"].as_str().map(String::from))
                        .unwrap_or_default();
                    if !holder.is_empty() && holder != self.config.identity {
                        warn!(lease = %self.config.name, %holder, "lease taken by another holder");
                        return;
                    }
                }
                Err(e) => warn!(lease = %self.config.name, error = %e, "renewing lease failed"),
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                warn!(lease = %self.config.name, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Runs `leading()` only while holding the Lease: waits to acquire it, runs the future, and
    /// drops it (stopping the work) the moment leadership is lost; then campaigns again. A
    /// `leading` future that returns on its own is started again on the next term. Never returns.
    pub async fn run<F, Fut>(mut self, mut leading: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(lease = %self.config.name, error = %e, "acquiring lease failed")
                    }
                }
                tokio::time::sleep(self.config.retry_period).await;
            }
            info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
            let work = leading();
            tokio::pin!(work);
            tokio::select! {
                _ = &mut work => {}
                _ = self.keep_renewing() => {
                    warn!(lease = %self.config.name, "lost leadership; stopping");
                }
            }
        }
    }
}

/// Runs `work` on a tokio runtime of its own (one worker thread), so that every task it spawns
/// — informers, controllers, timers — lives on that runtime and stops when the returned future is
/// dropped. A controller group that loses its Lease is stopped this way without each component
/// having to track the tasks it spawned.
pub async fn on_own_runtime<Fut>(name: &str, work: Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    struct ShutdownOnDrop(Option<tokio::runtime::Runtime>);
    impl Drop for ShutdownOnDrop {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                // Does not wait: dropping a runtime from async code must not block.
                rt.shutdown_background();
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "no runtime of its own; running in place");
            return work.await;
        }
    };
    let handle = rt.spawn(work);
    let _guard = ShutdownOnDrop(Some(rt));
    let _ = handle.await;
}
