//! Image pulls through real kubectl from Debian's docker-registry running in the node's network
//! namespace: a `registries.yaml` mirror (with a rewrite) for a made-up registry name, a cold
//! pull to Running, a missing tag reported as ErrImagePull/ImagePullBackOff with the registry's
//! message, an htpasswd-protected registry reached with an imagePullSecret (the pod's own or its
//! ServiceAccount's) and refused without one, and `k3rs images rm` refusing an image in use.
//! Needs root, as the node does.

use k3rs_e2e::registry::Registry;
use k3rs_e2e::{eventually, is_root, k3rs_bin, Cluster};
use std::time::Duration;

const MIRROR_PORT: u16 = 5000;
const AUTH_PORT: u16 = 5001;
const USER: &str = "k3rs";
const PASSWORD: &str = "s3cret-pw";

fn phase(c: &Cluster, name: &str) -> String {
    c.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
        .unwrap_or_default()
}

fn wait_running(c: &Cluster, name: &str) {
    let ok = eventually(Duration::from_secs(60), || {
        (phase(c, name) == "Running").then_some(())
    });
    assert!(
        ok.is_some(),
        "pod {name} not Running: {}\n{}",
        c.ok(&["describe", "pod", name]).unwrap_or_default(),
        c.log()
    );
}

/// The waiting reason and message of the pod's first container once it is one of `reasons`.
fn wait_waiting(c: &Cluster, name: &str, reasons: &[&str]) -> (String, String) {
    let got = eventually(Duration::from_secs(60), || {
        let pod = c.json(&["get", "pod", name]).ok()?;
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        let reason = waiting["reason"].as_str()?;
        reasons.contains(&reason).then(|| {
            (
                reason.to_string(),
                waiting["message"].as_str().unwrap_or("").to_string(),
            )
        })
    });
    got.unwrap_or_else(|| {
        panic!(
            "pod {name} never waited with {reasons:?}: {}",
            c.ok(&["describe", "pod", name]).unwrap_or_default()
        )
    })
}

#[test]
fn pulls_through_mirrors_and_pull_secrets() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let conf = tempfile::tempdir()?;
    let registries = conf.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "mirrors:\n  registry.example.test:\n    endpoint: [\"http://127.0.0.1:{MIRROR_PORT}\"]\n    rewrite:\n      \"^apps/(.*)\": \"mirrored/$1\"\n"
        ),
    )?;
    let c = Cluster::start_node_with(&["--private-registry", registries.to_str().unwrap()])?;
    let node = c.node_name()?;
    let ready = eventually(Duration::from_secs(30), || {
        let s = c
            .ok(&[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .ok()?;
        (s.trim() == "True").then_some(())
    });
    assert!(ready.is_some(), "node never became Ready");

    let open = Registry::start(&c, MIRROR_PORT, None)?;
    open.push_busybox("mirrored/busybox:1", None)?;
    let private = Registry::start(&c, AUTH_PORT, Some((USER, PASSWORD)))?;
    private.push_busybox("private/busybox:1", Some((USER, PASSWORD)))?;

    // Cold pull through the mirror: registry.example.test does not exist; the rewrite maps
    // apps/busybox to mirrored/busybox on the mirror.
    let image = "registry.example.test/apps/busybox:1";
    c.ok(&[
        "run",
        "cold",
        &format!("--image={image}"),
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    wait_running(&c, "cold");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=cold",
    ])?;
    assert!(events.contains("Pulled"), "{events}");

    // `k3rs images rm` refuses an image a container uses, like crictl rmi.
    let out = std::process::Command::new(k3rs_bin())
        .args(["images", "rm", image, "--data-dir"])
        .arg(c.data_dir())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rm of an image in use succeeded");
    assert!(stderr.contains("in use by container"), "{stderr}");

    // A missing tag: the registry's own message reaches the container status and the events.
    let missing = format!("127.0.0.1:{MIRROR_PORT}/mirrored/busybox:missing");
    c.ok(&[
        "run",
        "missing",
        &format!("--image={missing}"),
        "--restart=Never",
    ])?;
    let (_, message) = wait_waiting(&c, "missing", &["ErrImagePull", "ImagePullBackOff"]);
    assert!(message.contains("manifest unknown"), "{message}");
    let (_, message) = wait_waiting(&c, "missing", &["ImagePullBackOff"]);
    assert!(message.starts_with("Back-off pulling image"), "{message}");
    assert!(message.contains("manifest unknown"), "{message}");
    let describe = c.ok(&["describe", "pod", "missing"])?;
    assert!(describe.contains("Failed to pull image"), "{describe}");

    // The htpasswd registry refuses an anonymous pull...
    let private_image = format!("127.0.0.1:{AUTH_PORT}/private/busybox:1");
    c.ok(&[
        "run",
        "noauth",
        &format!("--image={private_image}"),
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    let (_, message) = wait_waiting(&c, "noauth", &["ErrImagePull", "ImagePullBackOff"]);
    assert!(
        message.to_lowercase().contains("not authorized"),
        "{message}"
    );

    // ...and serves one with an imagePullSecret made by kubectl.
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server=127.0.0.1:{AUTH_PORT}"),
        &format!("--docker-username={USER}"),
        &format!("--docker-password={PASSWORD}"),
    ])?;
    c.ok(&[
        "run",
        "withauth",
        &format!("--image={private_image}"),
        "--restart=Never",
        "--overrides={\"spec\":{\"imagePullSecrets\":[{\"name\":\"regcred\"}]}}",
        "--",
        "sleep",
        "3600",
    ])?;
    wait_running(&c, "withauth");

    // The ServiceAccount's imagePullSecrets count too (Always: the image is present by now).
    c.ok(&["create", "serviceaccount", "puller"])?;
    c.ok(&[
        "patch",
        "serviceaccount",
        "puller",
        "-p",
        "{\"imagePullSecrets\":[{\"name\":\"regcred\"}]}",
    ])?;
    c.ok(&[
        "run",
        "viasa",
        &format!("--image={private_image}"),
        "--image-pull-policy=Always",
        "--restart=Never",
        "--overrides={\"spec\":{\"serviceAccountName\":\"puller\"}}",
        "--",
        "sleep",
        "3600",
    ])?;
    wait_running(&c, "viasa");
    Ok(())
}

/// A registries.yaml that does not parse is reported with its file and line; the node still
/// starts and runs pods (no mirrors).
#[test]
fn a_broken_registries_yaml_is_logged_and_ignored() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let conf = tempfile::tempdir()?;
    let registries = conf.path().join("registries.yaml");
    std::fs::write(&registries, "mirrors:\n  docker.io:\n    endpoint: 5\n")?;
    let c = Cluster::start_node_with(&["--private-registry", registries.to_str().unwrap()])?;
    c.ok(&[
        "run",
        "still-runs",
        "--image=busybox:test",
        "--image-pull-policy=Never",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    wait_running(&c, "still-runs");
    let log = c.log();
    let expected = format!("{}:3:", registries.display());
    assert!(log.contains(&expected), "no {expected} in the log:\n{log}");
    Ok(())
}
