//! A pod's QoS class (`status.qosClass`), as upstream's `GetPodQOS`: the API server sets it at
//! creation and the kubelet places the pod's cgroup by it, so both read this one function.

use crate::quantity::Quantity;
use serde_json::Value;

pub const GUARANTEED: &str = "Guaranteed";
pub const BURSTABLE: &str = "Burstable";
pub const BEST_EFFORT: &str = "BestEffort";

/// BestEffort without any CPU/memory request or limit; Guaranteed when every container limits
/// both and the summed requests equal the summed limits (a request not given defaults to the
/// limit, as API defaulting does); Burstable otherwise. Zero quantities count as unset.
pub fn pod_qos_class(pod: &Value) -> &'static str {
    let amount = |c: &Value, kind: &str, res: &str| {
        Quantity::from_json(&c["resources"][kind][res])
            .map(|q| q.milli())
            .filter(|m| *m > 0)
    };
    let (mut any, mut guaranteed) = (false, true);
    let (mut requests, mut limits) = ([0i128; 2], [0i128; 2]);
    let containers = ["initContainers", "containers"]
        .into_iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten());
    for c in containers {
        for (i, res) in ["cpu", "memory"].into_iter().enumerate() {
            let limit = amount(c, "limits", res);
            let request = amount(c, "requests", res).or(limit);
            any |= request.is_some() || limit.is_some();
            guaranteed &= limit.is_some();
            requests[i] += request.unwrap_or(0);
            limits[i] += limit.unwrap_or(0);
        }
    }
    if !any {
        BEST_EFFORT
    } else if guaranteed && requests == limits {
        GUARANTEED
    } else {
        BURSTABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: Value) -> Value {
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn classes_as_upstream() {
        assert_eq!(pod_qos_class(&pod(json!([{"name": "a"}]))), BEST_EFFORT);
        let both = json!({"limits": {"cpu": "100m", "memory": "64Mi"}});
        // Requests default to limits.
        assert_eq!(
            pod_qos_class(&pod(json!([{"resources": both}, {"resources": both}]))),
            GUARANTEED
        );
        assert_eq!(
            pod_qos_class(&pod(json!([{"resources": both}, {}]))),
            BURSTABLE
        );
        assert_eq!(
            pod_qos_class(&pod(
                json!([{"resources": {"requests": {"memory": "10Mi"}}}])
            )),
            BURSTABLE
        );
        assert_eq!(
            pod_qos_class(&pod(json!([{"resources": {
                "limits": {"cpu": "1", "memory": "64Mi"},
                "requests": {"cpu": "500m", "memory": "64Mi"}
            }}]))),
            BURSTABLE
        );
        // Equal amounts written differently are equal.
        assert_eq!(
            pod_qos_class(&pod(json!([{"resources": {
                "limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1000m", "memory": "1024Mi"}
            }}]))),
            GUARANTEED
        );
        // Zero quantities do not count.
        assert_eq!(
            pod_qos_class(&pod(json!([{"resources": {"requests": {"cpu": "0"}}}]))),
            BEST_EFFORT
        );
        // Init containers count too.
        let with_init = json!({"spec": {
            "initContainers": [{"resources": {"requests": {"cpu": "1"}}}],
            "containers": [{"name": "a"}]}});
        assert_eq!(pod_qos_class(&with_init), BURSTABLE);
    }
}
