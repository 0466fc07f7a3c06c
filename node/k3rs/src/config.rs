//! K3s-style configuration file: `/etc/k3rs/config.yaml` (or `--config`/`K3RS_CONFIG_FILE`) holds
//! the same keys as the command-line flags; flags given on the command line win.

use anyhow::{bail, Context, Result};
use serde_yaml::Value;

pub const DEFAULT_CONFIG: &str = "/etc/k3rs/config.yaml";
pub const DEFAULT_KUBECONFIG: &str = "/etc/k3rs/k3rs.yaml";

/// Finds `--config`/`-c` in argv (or the env var), reads the file and inserts its keys as flags
/// right after the subcommand, so that explicit flags later in argv override them.
pub fn argv_with_config_file(argv: Vec<String>) -> Result<Vec<String>> {
    let Some(sub_idx) = argv.iter().position(|a| a == "server" || a == "agent") else {
        return Ok(argv);
    };
    let mut explicit = std::env::var("K3RS_CONFIG_FILE").ok();
    let mut rest = Vec::new();
    let mut i = sub_idx + 1;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--config" || a == "-c" {
            explicit = Some(argv.get(i + 1).cloned().context("--config needs a file")?);
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            explicit = Some(v.to_string());
        } else {
            rest.push(a.clone());
        }
        i += 1;
    }
    let path = explicit
        .clone()
        .unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading config file {path}")),
    };
    let flags = flags_from_yaml(&text).with_context(|| format!("config file {path}"))?;
    let mut out: Vec<String> = argv[..=sub_idx].to_vec();
    out.extend(flags);
    out.extend(rest);
    Ok(out)
}

/// `key: value` → `--key=value`; lists repeat the flag; booleans become bare flags.
pub fn flags_from_yaml(text: &str) -> Result<Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: Value = serde_yaml::from_str(text).context("invalid YAML")?;
    let Value::Mapping(map) = doc else {
        if doc.is_null() {
            return Ok(Vec::new());
        }
        bail!("the top level must be a mapping of flag names to values");
    };
    let mut flags = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            bail!("keys must be strings, got {k:?}")
        };
        let scalar = |v: &Value| -> Result<String> {
            Ok(match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => bail!("{key}: unsupported value {other:?}"),
            })
        };
        match &v {
            Value::Bool(true) => flags.push(format!("--{key}")),
            Value::Bool(false) => {}
            Value::Sequence(items) => {
                for item in items {
                    flags.push(format!("--{key}={}", scalar(item)?));
                }
            }
            other => flags.push(format!("--{key}={}", scalar(other)?)),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_to_flags() {
        let flags = flags_from_yaml("write-kubeconfig-mode: \"0644\"\ntls-san:\n  - a.example\n  - 10.0.0.1\ndisable-agent: true\nhttps-listen-port: 7443\n").unwrap();
        assert_eq!(
            flags,
            vec![
                "--write-kubeconfig-mode=0644",
                "--tls-san=a.example",
                "--tls-san=10.0.0.1",
                "--disable-agent",
                "--https-listen-port=7443"
            ]
        );
        assert!(flags_from_yaml("- a\n- b\n").is_err());
        assert!(flags_from_yaml("").unwrap().is_empty());
    }

    #[test]
    fn config_flags_come_before_explicit_ones() {
        let dir = tempfile_dir();
        let path = format!("{dir}/c.yaml");
        std::fs::write(&path, "node-name: fromfile\n").unwrap();
        let argv = vec![
            "k3rs".into(),
            "server".into(),
            "--config".into(),
            path.clone(),
            "--node-name=cli".into(),
        ];
        let out = argv_with_config_file(argv).unwrap();
        assert_eq!(
            out,
            vec!["k3rs", "server", "--node-name=fromfile", "--node-name=cli"]
        );
        let missing = vec![
            "k3rs".into(),
            "server".into(),
            "--config".into(),
            format!("{dir}/nope.yaml"),
        ];
        assert!(argv_with_config_file(missing).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> String {
        let d = std::env::temp_dir().join(format!("k3rs-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.to_string_lossy().into_owned()
    }
}
