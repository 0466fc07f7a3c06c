//! First-boot configuration: a NoCloud seed (`user-data` as `#cloud-config` with a `k3rs:`
//! section, `meta-data` with `local-hostname`) or `k3rs.toml` on the ESP.

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("user-data is not a #cloud-config document (first line {0:?})")]
    NotCloudConfig(String),
    #[error("user-data is not valid YAML")]
    Yaml(#[source] serde_yaml::Error),
    #[error("the k3rs section of user-data is invalid")]
    Section(#[source] serde_yaml::Error),
    #[error("k3rs.toml is invalid")]
    Toml(#[source] toml::de::Error),
    #[error("meta-data is not valid YAML")]
    MetaData(#[source] serde_yaml::Error),
    #[error("invalid hostname {0:?}")]
    Hostname(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Server,
    Agent,
}

/// The node's settings. Field names are the keys of the `k3rs:` section and of `k3rs.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeConfig {
    pub hostname: Option<String>,
    #[serde(default)]
    pub role: Role,
    /// Agent: the server to join.
    pub server_url: Option<String>,
    pub token: Option<String>,
    pub node_name: Option<String>,
    #[serde(default)]
    pub node_labels: Vec<String>,
    #[serde(default)]
    pub node_taints: Vec<String>,
    /// Extra flags passed to `k3rs server`/`k3rs agent` as they are.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Print the admin kubeconfig on the console once the API is up (test rigs, labs).
    #[serde(default)]
    pub print_kubeconfig: bool,
}

#[derive(Deserialize)]
struct CloudConfig {
    hostname: Option<String>,
    k3rs: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
struct MetaData {
    #[serde(rename = "local-hostname")]
    local_hostname: Option<String>,
}

fn check_hostname(h: &str) -> Result<(), ConfigError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Hostname(h.to_string()))
    }
}

impl NodeConfig {
    /// Parses a NoCloud seed. `meta-data`'s `local-hostname` is used when user-data sets none.
    pub fn from_nocloud(user_data: &str, meta_data: Option<&str>) -> Result<Self, ConfigError> {
        let first = user_data.lines().next().unwrap_or("").trim();
        let mut cfg = if user_data.trim().is_empty() {
            NodeConfig::default()
        } else {
            if first != "#cloud-config" {
                return Err(ConfigError::NotCloudConfig(
                    first.chars().take(40).collect(),
                ));
            }
            let cc: CloudConfig = serde_yaml::from_str(user_data).map_err(ConfigError::Yaml)?;
            let mut cfg: NodeConfig = match cc.k3rs {
                Some(v) => serde_yaml::from_value(v).map_err(ConfigError::Section)?,
                None => NodeConfig::default(),
            };
            if cfg.hostname.is_none() {
                cfg.hostname = cc.hostname;
            }
            cfg
        };
        if cfg.hostname.is_none() {
            if let Some(md) = meta_data.filter(|m| !m.trim().is_empty()) {
                let md: MetaData = serde_yaml::from_str(md).map_err(ConfigError::MetaData)?;
                cfg.hostname = md.local_hostname;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(ConfigError::Toml)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(h) = &self.hostname {
            check_hostname(h)?;
        }
        Ok(())
    }

    /// argv (without the program) for the node daemon.
    pub fn daemon_args(&self, data_dir: &str, kubeconfig: &str) -> Vec<String> {
        let mut a: Vec<String> = match self.role {
            Role::Server => vec![
                "server".into(),
                format!("--data-dir={data_dir}"),
                format!("--write-kubeconfig={kubeconfig}"),
            ],
            Role::Agent => {
                let mut a = vec!["agent".into()];
                if let Some(s) = &self.server_url {
                    a.push(format!("--server={s}"));
                }
                a
            }
        };
        if let Some(t) = &self.token {
            a.push(format!("--token={t}"));
        }
        if let Some(n) = &self.node_name {
            a.push(format!("--node-name={n}"));
        }
        for l in &self.node_labels {
            a.push(format!("--node-label={l}"));
        }
        for t in &self.node_taints {
            a.push(format!("--node-taint={t}"));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_with_section_and_meta_data() {
        let ud = "#cloud-config\nk3rs:\n  token: s3cret\n  extra-args: [--tls-san=10.0.0.1]\n  print-kubeconfig: true\n";
        let cfg = NodeConfig::from_nocloud(ud, Some("instance-id: i-1\nlocal-hostname: node-a\n"))
            .unwrap();
        assert_eq!(cfg.hostname.as_deref(), Some("node-a"));
        assert!(cfg.print_kubeconfig);
        assert_eq!(
            cfg.daemon_args("/var/lib/k3rs", "/etc/k3rs/k3rs.yaml"),
            vec![
                "server",
                "--data-dir=/var/lib/k3rs",
                "--write-kubeconfig=/etc/k3rs/k3rs.yaml",
                "--token=s3cret",
                "--tls-san=10.0.0.1"
            ]
        );
    }

    #[test]
    fn cloud_config_hostname_wins_over_meta_data() {
        let cfg = NodeConfig::from_nocloud(
            "#cloud-config\nhostname: top\n",
            Some("local-hostname: md\n"),
        )
        .unwrap();
        assert_eq!(cfg.hostname.as_deref(), Some("top"));
    }

    #[test]
    fn broken_user_data_is_an_error() {
        assert!(matches!(
            NodeConfig::from_nocloud("#!/bin/sh\necho hi\n", None),
            Err(ConfigError::NotCloudConfig(_))
        ));
        assert!(matches!(
            NodeConfig::from_nocloud("#cloud-config\nk3rs: [unclosed\n", None),
            Err(ConfigError::Yaml(_))
        ));
        assert!(matches!(
            NodeConfig::from_nocloud("#cloud-config\nk3rs:\n  rol: server\n", None),
            Err(ConfigError::Section(_))
        ));
        assert!(matches!(
            NodeConfig::from_nocloud("#cloud-config\nhostname: 'bad host'\n", None),
            Err(ConfigError::Hostname(_))
        ));
    }

    #[test]
    fn toml_agent() {
        let cfg = NodeConfig::from_toml(
            "role = \"agent\"\nserver-url = \"https://10.0.0.1:6443\"\ntoken = \"t\"\n",
        )
        .unwrap();
        assert_eq!(cfg.role, Role::Agent);
        assert_eq!(
            cfg.daemon_args("/d", "/k"),
            vec!["agent", "--server=https://10.0.0.1:6443", "--token=t"]
        );
        assert!(NodeConfig::from_toml("role = 3").is_err());
    }
}
