//! Every everyday kubectl verb against a real `k3rs server`, with kubectl 1.33 and 1.27.

use k3rs_e2e::{eventually, Cluster};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: one
"#;

#[test]
fn system_namespaces_and_kubernetes_service_exist() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    let out = c.ok(&["get", "ns"])?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(ns), "{ns} missing from:\n{out}");
    }
    assert!(
        out.contains("Active"),
        "namespaces should show STATUS Active:\n{out}"
    );
    let svc = c.json(&["get", "svc", "kubernetes", "-n", "default"])?;
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
    let version = c.ok(&["version", "-o", "json"])?;
    assert!(version.contains("v1.33.0+k3rs1"), "{version}");
    Ok(())
}

#[test]
fn create_get_label_delete_with_both_kubectl_versions() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    for (v, ns) in [(None, "v133"), (Some("1.27"), "v127")] {
        // 1.32+ sends protobuf bodies for these create commands.
        c.ok_version(v, &["create", "namespace", ns])?;
        c.ok_version(
            v,
            &["create", "configmap", "cfg", "-n", ns, "--from-literal=a=b"],
        )?;
        c.ok_version(
            v,
            &[
                "create",
                "secret",
                "generic",
                "s",
                "-n",
                ns,
                "--from-literal=pw=hunter2",
            ],
        )?;
        c.ok_version(
            v,
            &[
                "create",
                "deployment",
                "d",
                "-n",
                ns,
                "--image=busybox",
                "--replicas=2",
            ],
        )?;
        let cm = c.json(&["get", "cm", "cfg", "-n", ns])?;
        assert_eq!(cm["data"]["a"], "b");
        let secret = c.json(&["get", "secret", "s", "-n", ns])?;
        assert_eq!(secret["data"]["pw"], "aHVudGVyMg==");
        assert_eq!(secret["type"], "Opaque");
        let d = c.json(&["get", "deploy", "d", "-n", ns])?;
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["strategy"]["type"], "RollingUpdate",
            "defaulting applies"
        );
        c.ok_version(v, &["label", "cm", "cfg", "-n", ns, "tier=front"])?;
        c.ok_version(v, &["annotate", "cm", "cfg", "-n", ns, "note=hi"])?;
        let listed = c.ok_version(
            v,
            &["get", "cm", "-n", ns, "-l", "tier=front", "-o", "name"],
        )?;
        assert_eq!(listed.trim(), "configmap/cfg");
        let table = c.ok_version(v, &["get", "cm", "-n", ns])?;
        assert!(
            table.contains("DATA"),
            "ConfigMap table has a DATA column:\n{table}"
        );
        c.ok_version(v, &["scale", "deploy", "d", "-n", ns, "--replicas=5"])?;
        assert_eq!(
            c.json(&["get", "deploy", "d", "-n", ns])?["spec"]["replicas"],
            5
        );
        c.ok_version(v, &["delete", "cm", "cfg", "-n", ns])?;
        let err = c.fails(&["get", "cm", "cfg", "-n", ns])?;
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn apply_is_idempotent_and_server_side_apply_works() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    for v in [None, Some("1.27")] {
        let ns = if v.is_none() { "apply133" } else { "apply127" };
        c.ok(&["create", "ns", ns])?;
        let first = c.kubectl_stdin(v, &["apply", "-n", ns, "-f", "-"], DEPLOYMENT)?;
        assert!(first.contains("created"), "{first}");
        let rv1 =
            c.json(&["get", "deploy", "web", "-n", ns])?["metadata"]["resourceVersion"].clone();
        let second = c.kubectl_stdin(v, &["apply", "-n", ns, "-f", "-"], DEPLOYMENT)?;
        assert!(second.contains("unchanged"), "{second}");
        let rv2 =
            c.json(&["get", "deploy", "web", "-n", ns])?["metadata"]["resourceVersion"].clone();
        assert_eq!(rv1, rv2, "a no-op apply must not write");
        // Change the image of the one container through a strategic merge patch.
        let changed = DEPLOYMENT.replace("web:1", "web:2");
        c.kubectl_stdin(v, &["apply", "-n", ns, "-f", "-"], &changed)?;
        let d = c.json(&["get", "deploy", "web", "-n", ns])?;
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.local/web:2"
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"],
            "MODE"
        );
        assert_eq!(d["metadata"]["generation"], 2);
    }
    // Server-side apply: created with 201, then updated; a second manager conflicts.
    c.ok(&["create", "ns", "ssa"])?;
    let out = c.kubectl_stdin(
        None,
        &["apply", "--server-side", "-n", "ssa", "-f", "-"],
        DEPLOYMENT,
    )?;
    assert!(out.contains("serverside-applied"), "{out}");
    let d = c.json(&["get", "deploy", "web", "-n", "ssa", "--show-managed-fields"])?;
    let managers: Vec<String> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(managers.contains(&"kubectl".to_string()), "{managers:?}");
    let other = DEPLOYMENT.replace("replicas: 2", "replicas: 3");
    let conflict = c
        .kubectl_cmd(None)
        .args([
            "apply",
            "--server-side",
            "--field-manager=other",
            "-n",
            "ssa",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = write_and_wait(conflict, &other)?;
    assert!(!out.status.success(), "conflicting apply must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    c.kubectl_stdin(
        None,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=other",
            "-n",
            "ssa",
            "-f",
            "-",
        ],
        &other,
    )?;
    assert_eq!(
        c.json(&["get", "deploy", "web", "-n", "ssa"])?["spec"]["replicas"],
        3
    );
    Ok(())
}

fn write_and_wait(
    mut child: std::process::Child,
    input: &str,
) -> anyhow::Result<std::process::Output> {
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[test]
fn diff_edit_and_explain() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.kubectl_stdin(None, &["apply", "-f", "-"], DEPLOYMENT)?;
    let changed = DEPLOYMENT.replace("replicas: 2", "replicas: 4");
    let diff = c
        .kubectl_cmd(None)
        .args(["diff", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = write_and_wait(diff, &changed)?;
    // kubectl diff exits 1 when there are differences.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-  replicas: 2") && text.contains("+  replicas: 4"),
        "{text}"
    );
    // kubectl edit through a scripted editor.
    let editor = c.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 2/replicas: 7/' \"$1\"\n",
    )?;
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out = c
        .kubectl_cmd(None)
        .env("KUBE_EDITOR", &editor)
        .args(["edit", "deploy", "web"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.json(&["get", "deploy", "web"])?["spec"]["replicas"], 7);
    let explain = c.ok(&["explain", "pod.spec.containers.image"])?;
    assert!(
        explain.contains("image") && explain.contains("string"),
        "{explain}"
    );
    let explain27 = c.ok_version(Some("1.27"), &["explain", "deployment.spec.replicas"])?;
    assert!(
        explain27.contains("replicas") && explain27.contains("integer"),
        "{explain27}"
    );
    Ok(())
}

#[test]
fn watch_receives_updates() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.ok(&["create", "cm", "w1", "--from-literal=a=1"])?;
    let mut child = c
        .kubectl_cmd(None)
        .args(["get", "cm", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(line.clone());
                if line.contains(needle) {
                    return true;
                }
            }
        }
        false
    };
    assert!(wait_for("w1"), "initial list");
    c.ok(&["create", "cm", "w2", "--from-literal=a=1"])?;
    assert!(wait_for("w2"), "ADDED w2");
    c.ok(&["label", "cm", "w2", "x=y"])?;
    assert!(wait_for("MODIFIED"), "MODIFIED");
    c.ok(&["delete", "cm", "w2"])?;
    assert!(wait_for("DELETED"), "DELETED");
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[test]
fn conflicts_invalid_objects_and_rbac() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.ok(&["create", "cm", "c", "--from-literal=a=1"])?;
    let mut stale = c.json(&["get", "cm", "c"])?;
    c.ok(&["label", "cm", "c", "bump=1"])?;
    stale["data"]["a"] = serde_json::json!("2");
    let out = c
        .kubectl_cmd(None)
        .args(["replace", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = write_and_wait(out, &stale.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the object has been modified"),
        "409 expected: {err}"
    );

    let invalid = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i}]\n";
    let out = c
        .kubectl_cmd(None)
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = write_and_wait(out, invalid)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is invalid") && err.contains("spec.selector"),
        "422 expected: {err}"
    );

    // A service account token authenticates but has no permissions: 403.
    // Every namespace gets its `default` ServiceAccount and the root CA ConfigMap.
    let ready = eventually(Duration::from_secs(10), || {
        let sa = c.kubectl(&["get", "sa", "default", "-n", "default"]).ok()?;
        let cm = c
            .kubectl(&[
                "get",
                "cm",
                "kube-root-ca.crt",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ])
            .ok()?;
        (sa.status.success() && String::from_utf8_lossy(&cm.stdout).contains("BEGIN CERTIFICATE"))
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "default ServiceAccount and kube-root-ca.crt are published"
    );
    let token = c.ok(&["create", "token", "default", "-n", "default"])?;
    let out = c
        .kubectl_cmd(None)
        .args(["--token", token.trim(), "get", "secrets", "-n", "default"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("forbidden")
            && err.contains("system:serviceaccount:default:default"),
        "403 expected: {err}"
    );
    let can = c
        .kubectl_cmd(None)
        .args(["--token", token.trim(), "auth", "can-i", "list", "secrets"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    // Granting view lets it list pods but still not secrets.
    c.ok(&[
        "create",
        "rolebinding",
        "sa-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
        "-n",
        "default",
    ])?;
    let out = c
        .kubectl_cmd(None)
        .args(["--token", token.trim(), "get", "pods", "-n", "default"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.ok(&["auth", "can-i", "delete", "nodes"])?.trim(), "yes");
    // `auth can-i --list` (SelfSubjectRulesReview) shows what the view binding grants.
    let list = c
        .kubectl_cmd(None)
        .args([
            "--token",
            token.trim(),
            "auth",
            "can-i",
            "--list",
            "-n",
            "default",
        ])
        .output()?;
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{listed}"
    );
    assert!(
        !listed.lines().any(|l| l.starts_with("secrets ")),
        "{listed}"
    );
    // The components' system: roles, checked by impersonation (kubectl --as / --as-group).
    let can_as = |args: &[&str]| -> anyhow::Result<String> {
        let out = c.kubectl(&[&["auth", "can-i"], args].concat())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    for (args, want) in [
        (
            &[
                "create",
                "pods",
                "--subresource=binding",
                "--as=system:kube-scheduler",
            ][..],
            "yes",
        ),
        (
            &["delete", "secrets", "--as=system:kube-scheduler"][..],
            "no",
        ),
        (
            &[
                "list",
                "endpointslices.discovery.k8s.io",
                "--as=system:kube-proxy",
            ][..],
            "yes",
        ),
        (&["delete", "services", "--as=system:kube-proxy"][..], "no"),
        (
            &[
                "update",
                "deployments.apps",
                "-n",
                "kube-system",
                "--as=system:kube-controller-manager",
            ][..],
            "yes",
        ),
        (
            &[
                "patch",
                "nodes",
                "--subresource=status",
                "--as=system:node:n1",
                "--as-group=system:nodes",
            ][..],
            "yes",
        ),
        (
            &[
                "create",
                "clusterroles",
                "--as=system:node:n1",
                "--as-group=system:nodes",
            ][..],
            "no",
        ),
    ] {
        assert_eq!(can_as(args)?, want, "auth can-i {args:?}");
    }
    // Impersonating needs the impersonate verb: the view-bound service account has none.
    let out = c
        .kubectl_cmd(None)
        .args(["--token", token.trim(), "--as=admin", "get", "pods"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot impersonate"),
        "403 expected: {err}"
    );
    Ok(())
}

#[test]
fn custom_resource_definitions_round_trip() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: blue}
"#;
    c.kubectl_stdin(None, &["apply", "-f", "-"], crd)?;
    let ready = eventually(Duration::from_secs(10), || {
        c.kubectl(&["get", "widgets"])
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
    assert!(ready.is_some(), "widgets never became servable");
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}\n",
    )?;
    let w = c.json(&["get", "wd", "w"])?;
    assert_eq!(w["spec"]["color"], "blue", "schema default applied");
    let explain = c.ok(&["explain", "widget.spec.size"])?;
    assert!(
        explain.contains("integer"),
        "CRD schemas reach OpenAPI: {explain}"
    );
    let table = c.ok(&["get", "widgets"])?;
    assert!(table.contains("SIZE") && table.contains('3'), "{table}");
    let out = c
        .kubectl_cmd(None)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = write_and_wait(
        out,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0}\n",
    )?;
    assert!(!out.status.success(), "size 0 violates minimum");
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 5}\n",
    )?;
    c.ok(&["delete", "widget", "w"])?;
    c.ok(&["delete", "crd", "widgets.example.com"])?;
    let unserved = eventually(Duration::from_secs(10), || {
        let out = c
            .kubectl(&[
                "get",
                "--raw",
                "/apis/example.com/v1/namespaces/default/widgets",
            ])
            .ok()?;
        (!out.status.success()).then_some(())
    });
    assert!(unserved.is_some(), "a deleted CRD is no longer served");
    // Re-creating the CRD does not resurrect old objects.
    c.kubectl_stdin(None, &["apply", "-f", "-"], crd)?;
    let empty = eventually(Duration::from_secs(10), || {
        let out = c.kubectl(&["get", "widgets", "-o", "name"]).ok()?;
        (out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty())
            .then_some(())
    });
    assert!(
        empty.is_some(),
        "custom objects were removed with their CRD"
    );
    Ok(())
}

#[test]
fn namespace_deletion_empties_it_and_gc_follows_owners() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.ok(&["create", "ns", "doomed"])?;
    c.ok(&["create", "cm", "a", "-n", "doomed", "--from-literal=x=1"])?;
    c.ok(&[
        "create",
        "secret",
        "generic",
        "b",
        "-n",
        "doomed",
        "--from-literal=x=1",
    ])?;
    c.ok(&["delete", "ns", "doomed", "--timeout=30s"])?;
    let err = c.fails(&["get", "ns", "doomed"])?;
    assert!(err.contains("not found"), "{err}");

    // Owner references: a dependent goes with its owner (background propagation).
    c.ok(&["create", "cm", "owner", "--from-literal=x=1"])?;
    let uid = c.json(&["get", "cm", "owner"])?["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        &dependent_yaml("dep", "owner", &uid),
    )?;
    c.ok(&["delete", "cm", "owner"])?;
    let gone = eventually(Duration::from_secs(10), || {
        c.kubectl(&["get", "cm", "dep"])
            .ok()
            .filter(|o| !o.status.success())
            .map(|_| ())
    });
    assert!(gone.is_some(), "dependent should be garbage collected");

    // Orphan propagation keeps the dependent and drops its owner reference.
    c.ok(&["create", "cm", "owner2", "--from-literal=x=1"])?;
    let uid = c.json(&["get", "cm", "owner2"])?["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        &dependent_yaml("dep2", "owner2", &uid),
    )?;
    c.ok(&["delete", "cm", "owner2", "--cascade=orphan"])?;
    let orphaned = eventually(Duration::from_secs(10), || {
        let d = c.json(&["get", "cm", "dep2"]).ok()?;
        d["metadata"].get("ownerReferences").is_none().then_some(())
    });
    assert!(
        orphaned.is_some(),
        "orphaned dependent keeps living without owner reference"
    );
    Ok(())
}

fn dependent_yaml(name: &str, owner: &str, uid: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: {owner}\n    uid: {uid}\n")
}
