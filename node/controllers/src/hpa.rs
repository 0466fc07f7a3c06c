//! The HorizontalPodAutoscaler controller (autoscaling/v2), after upstream's
//! `reconcileAutoscaler`: reads the target's scale, clamps to `minReplicas`/`maxReplicas`, and
//! otherwise sizes the target from Resource metrics of `metrics.k8s.io` (pods' usage against
//! their requests, with upstream's 10% tolerance). k3rs serves no metrics API yet, so an HPA in
//! range reports `ScalingActive=False/FailedGetResourceMetric` and leaves the target alone.
//! Every HPA is looked at again after 15 s (upstream's `--horizontal-pod-autoscaler-sync-period`).

use crate::informer::{Informer, Queue};
use crate::selector::{is_deleting, split_key};
use crate::{enqueue, Ctx, Error};
use chrono::{SecondsFormat, Utc};
use k3rs_client::{ListParams, Patch, Resource};
use k3rs_resources::quantity::Quantity;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

const MANAGER: &str = "horizontal-pod-autoscaler";
/// Upstream's `--horizontal-pod-autoscaler-sync-period`.
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Upstream's `--horizontal-pod-autoscaler-tolerance`: usage within 10% of the target keeps the
/// replica count.
pub const TOLERANCE: f64 = 0.1;

pub fn resource() -> Resource {
    Resource::new("autoscaling", "v2", "horizontalpodautoscalers")
}

fn metrics_resource() -> Resource {
    Resource::new("metrics.k8s.io", "v1beta1", "pods")
}

/// The resource type a `scaleTargetRef` names (only kinds with a `scale` subresource).
fn target_resource(kind: &str) -> Option<Resource> {
    match kind {
        "Deployment" => Some(Resource::new("apps", "v1", "deployments")),
        "ReplicaSet" => Some(Resource::new("apps", "v1", "replicasets")),
        "StatefulSet" => Some(Resource::new("apps", "v1", "statefulsets")),
        "ReplicationController" => Some(Resource::core("replicationcontrollers")),
        _ => None,
    }
}

/// The Scale view of a scalable object: spec replicas and the label selector as a string.
fn scale_of(obj: &Value) -> (i64, String) {
    let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    let sel = &obj["spec"]["selector"];
    let labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .or_else(|| sel.as_object().filter(|_| sel.get("matchLabels").is_none()));
    let selector = labels
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    (replicas, selector)
}

/// Why the replica count is bounded, for the ScalingLimited condition.
#[derive(Debug, PartialEq, Eq)]
pub enum Limit {
    Within,
    TooFew,
    TooMany,
}

/// Clamps a recommendation to `[min, max]` (upstream's `convertDesiredReplicasWithRules`).
pub fn clamp(desired: i64, min: i64, max: i64) -> (i64, Limit) {
    if desired < min {
        (min, Limit::TooFew)
    } else if desired > max {
        (max, Limit::TooMany)
    } else {
        (desired, Limit::Within)
    }
}

/// Replicas for a utilization ratio (`usage / target`) over `pods` pods; within the tolerance
/// the current count stays.
pub fn replicas_for_ratio(current: i64, pods: i64, ratio: f64) -> i64 {
    if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * pods as f64).ceil() as i64
    }
}

/// What a pod requests of `resource`, summed over its containers (milli-units).
fn pod_request_milli(pod: &Value, resource: &str) -> i128 {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Quantity::from_json(&c["resources"]["requests"][resource]))
        .map(|q| q.milli())
        .sum()
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Sets a condition, keeping `lastTransitionTime` when the status did not change.
fn set_condition(conds: &mut Vec<Value>, type_: &str, status: bool, reason: &str, message: &str) {
    let status = if status { "True" } else { "False" };
    let old = conds.iter().position(|c| c["type"] == type_);
    let since = old
        .map(|i| &conds[i])
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
        .unwrap_or_else(now);
    let cond = json!({
        "type": type_, "status": status, "lastTransitionTime": since,
        "reason": reason, "message": message,
    });
    match old {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
}

/// The single Resource metric target an HPA names: resource name and either a utilization
/// percentage or an average value (milli-units).
enum Target {
    Utilization(String, i64),
    AverageValue(String, i128),
}

fn resource_targets(hpa: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for m in hpa["spec"]["metrics"].as_array().into_iter().flatten() {
        if m["type"] != "Resource" {
            continue;
        }
        let name = m["resource"]["name"].as_str().unwrap_or("cpu").to_string();
        let t = &m["resource"]["target"];
        if let Some(p) = t["averageUtilization"].as_i64() {
            out.push(Target::Utilization(name, p));
        } else if let Some(q) = Quantity::from_json(&t["averageValue"]) {
            out.push(Target::AverageValue(name, q.milli()));
        }
    }
    if hpa["spec"]["metrics"].is_null() {
        // Upstream's default: 80% CPU (also what an autoscaling/v1 object without a target means).
        let p = hpa["spec"]["targetCPUUtilizationPercentage"]
            .as_i64()
            .unwrap_or(80);
        out.push(Target::Utilization("cpu".into(), p));
    }
    out
}

#[derive(Clone)]
pub struct HpaController {
    ctx: Arc<Ctx>,
    hpas: Informer,
    queue: Queue,
}

impl HpaController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = HpaController {
            ctx,
            hpas: Informer::new(resource()),
            queue: Queue::default(),
        };
        enqueue::own_objects(&me.hpas, &me.queue);
        me
    }

    pub async fn run(self) {
        self.hpas.spawn(self.ctx.client.clone());
        self.hpas.wait_synced().await;
        let me = &self;
        crate::reconcile_keys(&self.queue, "HorizontalPodAutoscaler", |key| async move {
            me.reconcile(&key).await
        })
        .await
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(hpa) = self.hpas.get(key) else {
            return Ok(None);
        };
        if is_deleting(&hpa) {
            return Ok(None);
        }
        let (ns, _) = split_key(key);
        let mut status: Map<String, Value> = hpa["status"].as_object().cloned().unwrap_or_default();
        let mut conds: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let target_ref = &hpa["spec"]["scaleTargetRef"];
        let kind = target_ref["kind"].as_str().unwrap_or("");
        let target_name = target_ref["name"].as_str().unwrap_or("");
        let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
        let max = hpa["spec"]["maxReplicas"].as_i64().unwrap_or(min);

        let target = match target_resource(kind) {
            Some(r) => self
                .ctx
                .client
                .get(&r, Some(ns), target_name)
                .await
                .map(|t| (r, t)),
            None => Err(k3rs_client::ClientError {
                code: 404,
                reason: "NotFound".into(),
                message: format!("no scale subresource for kind {kind}"),
            }),
        };
        let (target_res, target) = match target {
            Ok(t) => t,
            Err(e) => {
                let msg =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                self.ctx
                    .recorder
                    .warning(&hpa, "FailedGetScale", &e.to_string(), "Scale")
                    .await;
                set_condition(&mut conds, "AbleToScale", false, "FailedGetScale", &msg);
                status.insert("conditions".into(), json!(conds));
                self.write_status(&hpa, status).await?;
                return Ok(Some(SYNC_PERIOD));
            }
        };
        let (current, selector) = scale_of(&target);
        set_condition(
            &mut conds,
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        );

        let mut rescale_reason = String::new();
        let desired = if current == 0 && min != 0 {
            set_condition(
                &mut conds,
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
            0
        } else if current > max {
            rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
            set_limited(&mut conds, Limit::TooMany);
            max
        } else if current < min {
            rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
            set_limited(&mut conds, Limit::TooFew);
            min
        } else {
            match self
                .replicas_for_metrics(&hpa, ns, &selector, current)
                .await
            {
                Ok((proposal, metric)) => {
                    set_condition(
                        &mut conds,
                        "ScalingActive",
                        true,
                        "ValidMetricFound",
                        &format!(
                            "the HPA was able to successfully calculate a replica count from {metric}"
                        ),
                    );
                    let (d, limit) = clamp(proposal, min, max);
                    set_limited(&mut conds, limit);
                    if d > current {
                        rescale_reason = format!("{metric} above target");
                    } else if d < current {
                        rescale_reason = "All metrics below target".into();
                    }
                    d
                }
                Err((reason, msg)) => {
                    self.ctx.recorder.warning(&hpa, reason, &msg, "Scale").await;
                    set_condition(
                        &mut conds,
                        "ScalingActive",
                        false,
                        reason,
                        &format!("the HPA was unable to compute the replica count: {msg}"),
                    );
                    current
                }
            }
        };

        if desired != current && !(current == 0 && min != 0) {
            match self
                .ctx
                .client
                .patch(
                    &target_res,
                    Some(ns),
                    target_name,
                    Patch::Merge(json!({"spec": {"replicas": desired}})),
                    Some("scale"),
                    MANAGER,
                )
                .await
            {
                Ok(_) => {
                    self.ctx
                        .recorder
                        .normal(
                            &hpa,
                            "SuccessfulRescale",
                            &format!("New size: {desired}; reason: {rescale_reason}"),
                            "Scale",
                        )
                        .await;
                    set_condition(
                        &mut conds,
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        &format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    );
                    status.insert("lastScaleTime".into(), json!(now()));
                }
                Err(e) => {
                    self.ctx
                        .recorder
                        .warning(&hpa, "FailedRescale", &e.to_string(), "Scale")
                        .await;
                    set_condition(
                        &mut conds,
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        &format!("the HPA controller was unable to update the target scale: {e}"),
                    );
                    status.insert("conditions".into(), json!(conds));
                    self.write_status(&hpa, status).await?;
                    return Err(Error::Api("updating scale", e));
                }
            }
        } else if conds
            .iter()
            .any(|c| c["type"] == "AbleToScale" && c["reason"] == "SucceededGetScale")
        {
            set_condition(
                &mut conds,
                "AbleToScale",
                true,
                "ReadyForNewScale",
                "recommended size matches current size",
            );
        }

        status.insert("currentReplicas".into(), json!(current));
        status.insert("desiredReplicas".into(), json!(desired));
        status.insert("conditions".into(), json!(conds));
        if let Some(g) = hpa["metadata"]["generation"].as_i64() {
            status.insert("observedGeneration".into(), json!(g));
        }
        self.write_status(&hpa, status).await?;
        Ok(Some(SYNC_PERIOD))
    }

    /// The replica count the HPA's Resource metrics ask for (the largest over its metrics), and
    /// a description of the metric; on failure the event/condition reason and message.
    async fn replicas_for_metrics(
        &self,
        hpa: &Value,
        ns: &str,
        selector: &str,
        current: i64,
    ) -> Result<(i64, String), (&'static str, String)> {
        let targets = resource_targets(hpa);
        if targets.is_empty() {
            return Err((
                "InvalidMetricSourceType",
                "no Resource metric in spec.metrics (only Resource metrics are supported)".into(),
            ));
        }
        let mut best: Option<(i64, String)> = None;
        for target in targets {
            let (name, got) = match &target {
                Target::Utilization(n, _) | Target::AverageValue(n, _) => {
                    (n.clone(), self.pod_usage(ns, selector, n).await)
                }
            };
            let usage = got.map_err(|e| {
                (
                    "FailedGetResourceMetric",
                    format!(
                        "failed to get {name} utilization: unable to get metrics for resource {name}: \
                         unable to fetch metrics from resource metrics API: {e}"
                    ),
                )
            })?;
            if usage.is_empty() {
                return Err((
                    "FailedGetResourceMetric",
                    format!("failed to get {name} utilization: unable to get metrics for resource {name}: no metrics returned from resource metrics API"),
                ));
            }
            let pods = usage.len() as i64;
            let used: i128 = usage.iter().map(|(_, u)| u).sum();
            let proposal = match &target {
                Target::Utilization(_, pct) => {
                    let requested: i128 = usage.iter().map(|(r, _)| r).sum();
                    if requested == 0 {
                        return Err((
                            "FailedGetResourceMetric",
                            format!("failed to get {name} utilization: missing request for {name}"),
                        ));
                    }
                    let utilization = used as f64 * 100.0 / requested as f64;
                    replicas_for_ratio(current, pods, utilization / *pct as f64)
                }
                Target::AverageValue(_, milli) => {
                    let ratio = used as f64 / (*milli as f64 * pods as f64);
                    replicas_for_ratio(current, pods, ratio)
                }
            };
            let label = format!("{name} resource");
            if best.as_ref().is_none_or(|(b, _)| proposal > *b) {
                best = Some((proposal, label));
            }
        }
        best.ok_or(("FailedGetResourceMetric", "no metrics".into()))
    }

    /// (request, usage) in milli-units of `resource` for each pod the metrics API reports.
    async fn pod_usage(
        &self,
        ns: &str,
        selector: &str,
        resource: &str,
    ) -> Result<Vec<(i128, i128)>, k3rs_client::ClientError> {
        let list = self
            .ctx
            .client
            .list(&metrics_resource(), Some(ns), &ListParams::labels(selector))
            .await?;
        Ok(list
            .items
            .iter()
            .map(|m| {
                let pod_name = m["metadata"]["name"].as_str().unwrap_or("");
                let request = self
                    .ctx
                    .pods
                    .get(&format!("{ns}/{pod_name}"))
                    .map(|p| pod_request_milli(&p, resource))
                    .unwrap_or(0);
                let usage = m["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| Quantity::from_json(&c["usage"][resource]))
                    .map(|q| q.milli())
                    .sum();
                (request, usage)
            })
            .collect())
    }

    async fn write_status(&self, hpa: &Value, status: Map<String, Value>) -> Result<(), Error> {
        let client = self.ctx.client.as_ref();
        let new = Value::Object(status);
        crate::status::write_if_changed(client, &self.hpas, &resource(), MANAGER, hpa, new).await
    }
}

fn set_limited(conds: &mut Vec<Value>, limit: Limit) {
    match limit {
        Limit::Within => set_condition(
            conds,
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        ),
        Limit::TooFew => set_condition(
            conds,
            "ScalingLimited",
            true,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        ),
        Limit::TooMany => set_condition(
            conds,
            "ScalingLimited",
            true,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_to_min_and_max() {
        assert_eq!(clamp(1, 3, 5), (3, Limit::TooFew));
        assert_eq!(clamp(9, 3, 5), (5, Limit::TooMany));
        assert_eq!(clamp(4, 3, 5), (4, Limit::Within));
    }

    #[test]
    fn tolerance_keeps_current_count() {
        // 105% and 91% of target: within 10%, no change.
        assert_eq!(replicas_for_ratio(4, 4, 1.05), 4);
        assert_eq!(replicas_for_ratio(4, 4, 0.91), 4);
        // 150% of target over 4 pods: ceil(6.0) = 6; 120% over 3 pods: ceil(3.6) = 4.
        assert_eq!(replicas_for_ratio(4, 4, 1.5), 6);
        assert_eq!(replicas_for_ratio(3, 3, 1.2), 4);
        // 25% of target over 4 pods: 1.
        assert_eq!(replicas_for_ratio(4, 4, 0.25), 1);
    }

    #[test]
    fn scale_view_of_deployment_and_rc() {
        let d = json!({"spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}});
        assert_eq!(scale_of(&d), (2, "app=web".to_string()));
        let rc = json!({"spec": {"replicas": 1, "selector": {"app": "web"}}});
        assert_eq!(scale_of(&rc), (1, "app=web".to_string()));
    }

    #[test]
    fn kubectl_autoscale_target_is_cpu_utilization() {
        let hpa = json!({"spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}]}});
        let t = resource_targets(&hpa);
        assert!(matches!(&t[..], [Target::Utilization(n, 50)] if n == "cpu"));
    }
}
