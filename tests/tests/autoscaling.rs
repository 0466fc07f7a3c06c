//! HorizontalPodAutoscaler end to end: the real `k3rs server` with the fake kubelet, driven by
//! `kubectl autoscale`. k3rs serves no metrics API yet, so the HPA can only clamp the target to
//! its bounds and must then report that it cannot read CPU metrics.

use k3rs_e2e::fake_kubelet::{add_node, FakeKubelet};
use k3rs_e2e::{eventually, Cluster};
use std::time::Duration;

#[test]
fn hpa_scales_up_to_min_and_reports_missing_metrics() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "8")?;
    let _kubelet = FakeKubelet::start(&c);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=registry.local/web:1",
        "--replicas=1",
    ])?;
    c.ok(&[
        "autoscale",
        "deployment",
        "web",
        "--min=3",
        "--max=5",
        "--cpu-percent=50",
    ])?;

    let scaled = eventually(Duration::from_secs(15), || {
        let d = c.json(&["get", "deployment", "web"]).ok()?;
        (d["spec"]["replicas"] == 3).then_some(())
    });
    assert!(scaled.is_some(), "deployment scaled to minReplicas 3");

    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler,reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    assert!(
        events.contains("New size: 3; reason: Current number of replicas below Spec.MinReplicas"),
        "rescale event: {events}"
    );

    let hpa = eventually(Duration::from_secs(10), || {
        let h = c.json(&["get", "hpa", "web"]).ok()?;
        let conds = h["status"]["conditions"].as_array()?.clone();
        let active = conds.iter().find(|c| c["type"] == "ScalingActive")?;
        (h["status"]["currentReplicas"] == 3
            && active["status"] == "False"
            && active["reason"] == "FailedGetResourceMetric")
            .then_some(h)
    });
    let Some(hpa) = hpa else {
        panic!(
            "HPA status: {}",
            c.ok(&["get", "hpa", "web", "-o", "json"])
                .unwrap_or_default()
        );
    };
    assert_eq!(hpa["status"]["desiredReplicas"], 3);
    let active = hpa["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "ScalingActive")
        .cloned()
        .unwrap_or_default();
    assert!(
        active["message"].as_str().unwrap_or("").starts_with(
            "the HPA was unable to compute the replica count: failed to get cpu utilization"
        ),
        "{active}"
    );
    // The deployment stays at 3: no metrics, no scaling.
    let d = c.json(&["get", "deployment", "web"])?;
    assert_eq!(d["spec"]["replicas"], 3);
    let warnings = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=FailedGetResourceMetric",
        "-o",
        "name",
    ])?;
    assert!(!warnings.trim().is_empty(), "FailedGetResourceMetric event");
    Ok(())
}
