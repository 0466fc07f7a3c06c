//! API machinery semantics through real kubectl: dry-run, field validation, pagination,
//! finalizers, foreground deletion, the status subresource, and every kubectl minor version.

use k3rs_e2e::{eventually, Cluster};
use std::time::Duration;

#[test]
fn dry_run_and_strict_field_validation() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    let out = c.ok(&[
        "create",
        "deploy",
        "d",
        "--image=busybox",
        "--dry-run=server",
        "-o",
        "json",
    ])?;
    let obj: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        obj["spec"]["replicas"], 1,
        "server dry run returns the defaulted object"
    );
    assert!(
        c.fails(&["get", "deploy", "d"])?.contains("not found"),
        "dry run stores nothing"
    );

    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\ndatta: {a: b}\n";
    let err = c
        .kubectl_stdin(None, &["apply", "-f", "-"], typo)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown field") && err.contains("datta"),
        "{err}"
    );
    assert!(c.fails(&["get", "cm", "t"])?.contains("not found"));
    // --validate=warn stores the object and prints the server's warning.
    let out = c
        .kubectl_cmd(None)
        .args(["apply", "--validate=warn", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let out = {
        use std::io::Write;
        let mut out = out;
        out.stdin
            .take()
            .unwrap()
            .write_all(typo.replace("name: t", "name: w").as_bytes())?;
        out.wait_with_output()?
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"datta\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --validate=false sends fieldValidation=Ignore: accepted, unknown field dropped.
    c.kubectl_stdin(None, &["apply", "--validate=false", "-f", "-"], typo)?;
    let cm = c.json(&["get", "cm", "t"])?;
    assert!(cm.get("datta").is_none());
    Ok(())
}

#[test]
fn chunked_lists_return_everything() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.ok(&["create", "ns", "many"])?;
    for i in 0..7 {
        c.ok(&[
            "create",
            "cm",
            &format!("cm-{i}"),
            "-n",
            "many",
            "--from-literal=a=1",
        ])?;
    }
    let names = c.ok(&[
        "get",
        "cm",
        "-n",
        "many",
        "--chunk-size=2",
        "-o",
        "name",
        "-l",
        "!nothing",
    ])?;
    let got: Vec<&str> = names.lines().filter(|l| l.contains("cm-")).collect();
    assert_eq!(got.len(), 7, "{names}");
    // A page by hand carries a continue token.
    let page = c.ok(&["get", "--raw", "/api/v1/namespaces/many/configmaps?limit=3"])?;
    let page: serde_json::Value = serde_json::from_str(&page)?;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    let rest = c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/many/configmaps?limit=100&continue={token}"),
    ])?;
    let rest: serde_json::Value = serde_json::from_str(&rest)?;
    assert_eq!(
        rest["items"].as_array().unwrap().len(),
        8 - 3,
        "7 ConfigMaps plus kube-root-ca.crt"
    );
    assert!(rest["metadata"].get("continue").is_none());
    Ok(())
}

#[test]
fn finalizers_hold_deletion_and_foreground_waits_for_dependents() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.kubectl_stdin(None, &["create", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n")?;
    c.ok(&["delete", "cm", "held", "--wait=false"])?;
    let held = c.json(&["get", "cm", "held"])?;
    assert!(
        held["metadata"]["deletionTimestamp"].is_string(),
        "deletion is pending: {held}"
    );
    c.ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])?;
    assert!(
        c.fails(&["get", "cm", "held"])?.contains("not found"),
        "removing the last finalizer deletes"
    );

    c.ok(&["create", "cm", "owner", "--from-literal=a=1"])?;
    let uid = c.json(&["get", "cm", "owner"])?["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let dep = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dep\n  finalizers: [example.com/slow]\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}, blockOwnerDeletion: true}}\n");
    c.kubectl_stdin(None, &["create", "-f", "-"], &dep)?;
    c.ok(&[
        "delete",
        "cm",
        "owner",
        "--cascade=foreground",
        "--wait=false",
    ])?;
    // The owner waits while its dependent is held by a finalizer.
    let waiting = eventually(Duration::from_secs(10), || {
        let d = c.json(&["get", "cm", "dep"]).ok()?;
        d["metadata"]["deletionTimestamp"].is_string().then_some(())
    });
    assert!(waiting.is_some(), "dependent is being deleted");
    let owner = c.json(&["get", "cm", "owner"])?;
    assert!(owner["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "foregroundDeletion"));
    c.ok(&[
        "patch",
        "cm",
        "dep",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])?;
    let gone = eventually(Duration::from_secs(10), || {
        c.kubectl(&["get", "cm", "owner"])
            .ok()
            .filter(|o| !o.status.success())
            .map(|_| ())
    });
    assert!(gone.is_some(), "owner goes once its dependents are gone");
    Ok(())
}

#[test]
fn status_subresource_is_separate_from_spec() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    // A custom resource: no controller writes its status, so the test sees only its own writes.
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: gadgets, singular: gadget, kind: Gadget}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    subresources: {status: {}}\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {type: object, properties: {size: {type: integer}}}\n          status: {type: object, properties: {seen: {type: integer}}}\n";
    c.kubectl_stdin(None, &["apply", "-f", "-"], crd)?;
    let ready = eventually(Duration::from_secs(10), || {
        c.kubectl(&["get", "gadgets"])
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
    assert!(ready.is_some());
    c.kubectl_stdin(None, &["create", "-f", "-"], "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\nspec: {size: 1}\nstatus: {seen: 5}\n")?;
    let g = c.json(&["get", "gadget", "g"])?;
    assert!(
        g.get("status").is_none(),
        "status is dropped on create: {g}"
    );
    c.ok(&[
        "patch",
        "gadget",
        "g",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"seen":9}}"#,
    ])?;
    let g = c.json(&["get", "gadget", "g"])?;
    assert_eq!(g["status"]["seen"], 9);
    assert_eq!(
        g["metadata"]["generation"], 1,
        "status writes do not bump generation"
    );
    // The main resource ignores status changes; spec changes bump generation.
    c.ok(&[
        "patch",
        "gadget",
        "g",
        "--type=merge",
        "-p",
        r#"{"status":{"seen":1},"spec":{"size":2}}"#,
    ])?;
    let g = c.json(&["get", "gadget", "g"])?;
    assert_eq!(g["status"]["seen"], 9);
    assert_eq!(g["spec"]["size"], 2);
    assert_eq!(g["metadata"]["generation"], 2);
    c.ok(&["create", "deploy", "d", "--image=busybox"])?;
    let table = c.ok(&["get", "deploy", "d"])?;
    assert!(
        table.contains("UP-TO-DATE") && table.contains("AVAILABLE"),
        "{table}"
    );
    Ok(())
}

#[test]
fn every_kubectl_minor_version_works() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    for minor in 27..=33 {
        let v = format!("1.{minor}");
        let ns = format!("v{minor}");
        c.ok_version(Some(&v), &["create", "ns", &ns])?;
        c.ok_version(
            Some(&v),
            &["create", "configmap", "c", "-n", &ns, "--from-literal=k=v"],
        )?;
        let apply = format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{a: b}}}}\n  template:\n    metadata: {{labels: {{a: b}}}}\n    spec: {{containers: [{{name: c, image: busybox}}]}}\n");
        c.kubectl_stdin(Some(&v), &["apply", "-f", "-"], &apply)?;
        let again = c.kubectl_stdin(Some(&v), &["apply", "-f", "-"], &apply)?;
        assert!(again.contains("unchanged"), "kubectl {v}: {again}");
        let all = c.ok_version(Some(&v), &["get", "all,cm", "-n", &ns])?;
        assert!(
            all.contains("deployment.apps/d") && all.contains("configmap/c"),
            "kubectl {v}: {all}"
        );
        c.ok_version(Some(&v), &["delete", "ns", &ns, "--timeout=60s"])?;
    }
    Ok(())
}

#[test]
fn watch_bookmarks_mark_the_end_of_initial_events() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    c.ok(&["create", "cm", "b1", "--from-literal=a=1"])?;
    let out = c.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"])?;
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let added: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "ADDED").collect();
    assert!(
        added
            .iter()
            .any(|e| e["object"]["metadata"]["name"] == "b1"),
        "{out}"
    );
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // A watch from a given resourceVersion sends only later changes.
    let rv = c.json(&["get", "cm", "b1"])?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(&["label", "cm", "b1", "x=1"])?;
    let out = c.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ])?;
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["type"], "MODIFIED");
    Ok(())
}
