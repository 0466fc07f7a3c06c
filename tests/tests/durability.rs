//! Data survives `kill -9` and a restart; PKI and kubeconfig are reused; bad input changes nothing.

use k3rs_e2e::Cluster;
use std::process::Stdio;

#[test]
fn data_survives_kill_9_and_restart() -> anyhow::Result<()> {
    let mut c = Cluster::start()?;
    c.ok(&["create", "cm", "keep", "--from-literal=a=1"])?;
    let before = c.json(&["get", "cm", "keep"])?;
    let ca_before = std::fs::read(c.data_dir().join("server/tls/ca.crt"))?;
    let token_before = std::fs::read_to_string(c.data_dir().join("server/token"))?;
    assert!(
        token_before.starts_with("K10") && token_before.contains("::server:"),
        "{token_before}"
    );
    let mode = std::fs::metadata(&c.kubeconfig)?.permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    c.restart()?;
    let after = c.json(&["get", "cm", "keep"])?;
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(
        ca_before,
        std::fs::read(c.data_dir().join("server/tls/ca.crt"))?,
        "CA reused"
    );
    assert_eq!(
        token_before,
        std::fs::read_to_string(c.data_dir().join("server/token"))?,
        "token reused"
    );
    let rv_before: i64 = before["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()?;
    c.ok(&["create", "cm", "later", "--from-literal=a=1"])?;
    let rv_after: i64 = c.json(&["get", "cm", "later"])?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()?;
    assert!(
        rv_after > rv_before,
        "resourceVersions keep rising: {rv_after} <= {rv_before}"
    );
    Ok(())
}

#[test]
fn bad_input_gets_status_errors_and_changes_nothing() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    let rv = |c: &Cluster| -> anyhow::Result<String> {
        Ok(c.json(&["get", "cm", "-A"])?["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string())
    };
    let before = rv(&c)?;
    let path = c.dir.path().join("body");
    for (body, want) in [
        ("{not json", "BadRequest"),
        (
            "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"x\"}}",
            "BadRequest",
        ),
        (
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"Bad_Name\"}}",
            "Invalid",
        ),
    ] {
        std::fs::write(&path, body)?;
        let out = c.kubectl(&[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            path.to_str().unwrap(),
        ])?;
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{body} should fail");
        assert!(
            err.contains(want)
                || err.contains(&want.to_lowercase())
                || err.contains("invalid")
                || err.contains("could not be decoded"),
            "{body}: {err}"
        );
    }
    // A body over the 3 MiB limit.
    std::fs::write(&path, format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(4 << 20)))?;
    let out = c.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        path.to_str().unwrap(),
    ])?;
    assert!(!out.status.success(), "oversize body must be rejected");
    // Unknown kinds and resources.
    let out = c
        .kubectl_cmd(None)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = {
        use std::io::Write;
        let mut out = out;
        out.stdin
            .take()
            .unwrap()
            .write_all(b"apiVersion: nothing.example/v1\nkind: Nope\nmetadata: {name: x}\n")?;
        out.wait_with_output()?
    };
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.kubectl(&["get", "--raw", "/api/v1/nonsense"])?;
    assert!(!out.status.success());
    assert_eq!(before, rv(&c)?, "no bad request may change the store");
    Ok(())
}

#[test]
fn config_file_sets_flags() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "write-kubeconfig-mode: \"0644\"\ntls-san:\n  - k3rs.example.test\n",
    )?;
    let c = Cluster::start_with(&[&format!("--config={}", cfg.display())])?;
    let mode = std::fs::metadata(&c.kubeconfig)?.permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o644
    );
    Ok(())
}
