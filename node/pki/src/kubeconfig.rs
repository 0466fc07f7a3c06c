//! Kubeconfig files in the layout K3s writes (`/etc/rancher/k3s/k3s.yaml`).

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::files::write_atomic;
use crate::Error;

/// Render a kubeconfig with one cluster, one user and one context, all named `cluster_name`
/// (`"default"` like K3s when empty), with the CA and client credentials embedded as base64.
pub fn render_kubeconfig(
    server_url: &str,
    cluster_name: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> String {
    let name = if cluster_name.is_empty() {
        "default"
    } else {
        cluster_name
    };
    // JSON string literals are valid YAML double-quoted scalars, so quoting through serde_json
    // keeps any name or URL safe.
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let name = q(name);
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {name}\n\
         contexts:\n\
         - context:\n    cluster: {name}\n    user: {name}\n  name: {name}\n\
         current-context: {name}\n\
         preferences: {{}}\n\
         users:\n\
         - name: {name}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = STANDARD.encode(ca_pem),
        server = q(server_url),
        cert = STANDARD.encode(client_cert_pem),
        key = STANDARD.encode(client_key_pem),
    )
}

/// Write a kubeconfig (see [`render_kubeconfig`]) to `path` atomically with file mode `mode`
/// (K3s uses 0600), creating missing parent directories.
pub fn write_kubeconfig(
    path: &Path,
    mode: u32,
    server_url: &str,
    cluster_name: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<(), Error> {
    let yaml = render_kubeconfig(
        server_url,
        cluster_name,
        ca_pem,
        client_cert_pem,
        client_key_pem,
    );
    write_atomic(path, yaml.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn kubeconfig_is_yaml_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/rancher/k3rs/k3rs.yaml");
        write_kubeconfig(
            &path,
            0o600,
            "https://127.0.0.1:6443",
            "default",
            "CA PEM",
            "CERT PEM",
            "KEY PEM",
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["apiVersion"].as_str(), Some("v1"));
        assert_eq!(v["kind"].as_str(), Some("Config"));
        assert_eq!(v["current-context"].as_str(), Some("default"));
        let cluster = &v["clusters"][0];
        assert_eq!(cluster["name"].as_str(), Some("default"));
        assert_eq!(
            cluster["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        let ca = STANDARD
            .decode(
                cluster["cluster"]["certificate-authority-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(ca, b"CA PEM");
        let user = &v["users"][0];
        assert_eq!(user["name"].as_str(), Some("default"));
        let key = STANDARD
            .decode(user["user"]["client-key-data"].as_str().unwrap())
            .unwrap();
        assert_eq!(key, b"KEY PEM");
        let ctx = &v["contexts"][0];
        assert_eq!(ctx["context"]["cluster"].as_str(), Some("default"));
        assert_eq!(ctx["context"]["user"].as_str(), Some("default"));

        // Rewriting with another mode replaces the file atomically and applies the mode.
        write_kubeconfig(&path, 0o644, "https://x:1", "", "a", "b", "c").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
