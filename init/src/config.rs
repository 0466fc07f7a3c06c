//! First-boot configuration: a NoCloud seed (`user-data` as `#cloud-config` with a `k3rs:`
//! section, `meta-data` with `local-hostname`) or `k3rs.toml` on the ESP.

use serde::Deserialize;
use std::net::Ipv4Addr;

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
    #[error("network-config is not valid YAML")]
    NetworkYaml(#[source] serde_yaml::Error),
    #[error("network-config version {0} is not supported (only version 2)")]
    NetworkVersion(u64),
    #[error("invalid static address {0:?} (want a.b.c.d/prefix)")]
    Address(String),
}

/// A static IPv4 configuration, applied over netlink instead of DHCP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StaticNetwork {
    /// The interface; default: the first wired one.
    pub interface: Option<String>,
    /// `a.b.c.d/prefix`.
    pub address: String,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

impl StaticNetwork {
    /// The address and prefix length.
    pub fn cidr(&self) -> Result<(Ipv4Addr, u8), ConfigError> {
        let bad = || ConfigError::Address(self.address.clone());
        let (a, p) = self.address.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = p.trim().parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok((addr, prefix))
    }
}

/// NoCloud `network-config`, version 2 (netplan-like): the first entry of `ethernets` with
/// static `addresses` becomes a [`StaticNetwork`]; `dhcp4: true` or no addresses means DHCP.
#[derive(Deserialize)]
struct NetworkConfigV2 {
    version: u64,
    #[serde(default)]
    ethernets: std::collections::BTreeMap<String, EthernetV2>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct EthernetV2 {
    #[serde(default)]
    dhcp4: bool,
    #[serde(default)]
    addresses: Vec<String>,
    gateway4: Option<Ipv4Addr>,
    #[serde(default)]
    routes: Vec<RouteV2>,
    nameservers: Option<NameserversV2>,
    #[serde(rename = "set-name")]
    set_name: Option<String>,
}

#[derive(Deserialize)]
struct RouteV2 {
    to: String,
    via: Ipv4Addr,
}

#[derive(Deserialize)]
struct NameserversV2 {
    #[serde(default)]
    addresses: Vec<Ipv4Addr>,
}

/// Parses a NoCloud `network-config` (v2). `Ok(None)`: DHCP.
pub fn parse_network_config(text: &str) -> Result<Option<StaticNetwork>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    // Both `network: {version: 2, ...}` and the bare document are seen in the wild.
    let v: serde_yaml::Value = serde_yaml::from_str(text).map_err(ConfigError::NetworkYaml)?;
    let v = match v.get("network") {
        Some(inner) => inner.clone(),
        None => v,
    };
    let nc: NetworkConfigV2 = serde_yaml::from_value(v).map_err(ConfigError::NetworkYaml)?;
    if nc.version != 2 {
        return Err(ConfigError::NetworkVersion(nc.version));
    }
    for (id, eth) in nc.ethernets {
        let Some(address) = eth.addresses.first().filter(|_| !eth.dhcp4) else {
            continue;
        };
        let gateway = eth.gateway4.or_else(|| {
            eth.routes
                .iter()
                .find(|r| r.to == "default" || r.to == "0.0.0.0/0")
                .map(|r| r.via)
        });
        let net = StaticNetwork {
            interface: Some(eth.set_name.unwrap_or(id)),
            address: address.clone(),
            gateway,
            dns: eth.nameservers.map(|n| n.addresses).unwrap_or_default(),
        };
        net.cidr()?;
        return Ok(Some(net));
    }
    Ok(None)
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
    /// SNTP servers (`host` or `host:port`); DHCP option 42 adds to these.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    /// Static IPv4 instead of DHCP.
    pub network: Option<StaticNetwork>,
    /// Seconds a trial boot of an updated slot gets for its API to answer before PID 1 reboots
    /// into the previous slot (default 600).
    pub update_trial_timeout: Option<u64>,
}

#[derive(Deserialize)]
struct CloudConfig {
    hostname: Option<String>,
    k3rs: Option<serde_yaml::Value>,
    /// cloud-init's own `ntp: {servers: [...]}` module, honoured too.
    ntp: Option<CloudNtp>,
}

#[derive(Deserialize)]
struct CloudNtp {
    #[serde(default)]
    servers: Vec<String>,
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
            if let Some(ntp) = cc.ntp {
                for s in ntp.servers {
                    if !cfg.ntp_servers.contains(&s) {
                        cfg.ntp_servers.push(s);
                    }
                }
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
        if let Some(n) = &self.network {
            n.cidr()?;
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

    #[test]
    fn static_network_and_ntp_in_toml_and_user_data() {
        let cfg = NodeConfig::from_toml(
            "ntp-servers = [\"10.0.2.2:1123\"]\n[network]\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n",
        )
        .unwrap();
        let net = cfg.network.unwrap();
        assert_eq!(net.cidr().unwrap(), (Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(net.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(cfg.ntp_servers, vec!["10.0.2.2:1123"]);
        assert!(matches!(
            NodeConfig::from_toml("[network]\naddress = \"10.0.2.15\"\n"),
            Err(ConfigError::Address(_))
        ));
        assert!(matches!(
            NodeConfig::from_toml("[network]\naddress = \"10.0.2.15/33\"\n"),
            Err(ConfigError::Address(_))
        ));

        let ud = "#cloud-config\nntp:\n  servers: [ntp.example]\nk3rs:\n  ntp-servers: [10.0.0.1]\n  network:\n    interface: eth1\n    address: 192.168.1.5/16\n";
        let cfg = NodeConfig::from_nocloud(ud, None).unwrap();
        assert_eq!(cfg.ntp_servers, vec!["10.0.0.1", "ntp.example"]);
        let net = cfg.network.unwrap();
        assert_eq!(net.interface.as_deref(), Some("eth1"));
        assert_eq!(net.cidr().unwrap().1, 16);
        assert_eq!(net.gateway, None);
    }

    #[test]
    fn network_config_v2() {
        let nc = "version: 2\nethernets:\n  eth0:\n    addresses: [10.0.2.15/24]\n    gateway4: 10.0.2.2\n    nameservers:\n      addresses: [10.0.2.3]\n";
        let net = parse_network_config(nc).unwrap().unwrap();
        assert_eq!(net.interface.as_deref(), Some("eth0"));
        assert_eq!(net.cidr().unwrap(), (Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(net.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);

        // Wrapped in `network:`, default route via `routes`.
        let nc = "network:\n  version: 2\n  ethernets:\n    lan:\n      addresses: [\"172.16.0.9/12\"]\n      routes:\n        - to: default\n          via: 172.16.0.1\n";
        let net = parse_network_config(nc).unwrap().unwrap();
        assert_eq!(net.gateway, Some(Ipv4Addr::new(172, 16, 0, 1)));
        assert!(net.dns.is_empty());

        // DHCP or nothing static: None.
        assert_eq!(
            parse_network_config("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n").unwrap(),
            None
        );
        assert_eq!(parse_network_config("").unwrap(), None);
        assert!(matches!(
            parse_network_config("version: 1\nconfig: []\n"),
            Err(ConfigError::NetworkVersion(1))
        ));
        assert!(matches!(
            parse_network_config("version: 2\nethernets:\n  eth0:\n    addresses: [bogus]\n"),
            Err(ConfigError::Address(_))
        ));
        assert!(parse_network_config("version: [").is_err());
    }
}
