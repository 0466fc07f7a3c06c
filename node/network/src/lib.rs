//! The pod network of a k3rs node — what flannel plus the bridge CNI plugin give K3s: a bridge
//! (`cni0`) holding the first address of the node's podCIDR, a veth pair per pod (host side on
//! the bridge, `eth0` in the pod's namespace with an address from host-local IPAM and a default
//! route via the bridge), IP forwarding, and one nftables table (`ip k3rs-net`) with masquerade
//! for traffic leaving the cluster network, forwarding for the bridge and hostPort DNAT.
//!
//! Everything is blocking: callers on an async runtime use `spawn_blocking`. The MTU is a
//! parameter so a VXLAN overlay (multi-node, 1450) can lower it; addresses are handled family
//! neutral so a second (IPv6) range can be added for dual-stack.
#![forbid(unsafe_code)]

pub mod ipam;
mod link;
pub mod nft;

pub use ipam::{Cidr, Ipam};
pub use nft::{HostPort, Protocol};

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tracing::{debug, info, info_span, warn};

/// The default bridge name, as K3s's flannel CNI config names it.
pub const BRIDGE: &str = "cni0";
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {context}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("entering network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error("link {0} is missing after creating it")]
    Missing(String),
    #[error(transparent)]
    Nft(#[from] k3rs_nft::Error),
    #[error("the netlink thread panicked")]
    Thread,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// How the node's pod network is laid out.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The whole cluster's pod network (`--cluster-cidr`): traffic leaving it is masqueraded.
    pub cluster_cidr: Cidr,
    /// This node's share (`spec.podCIDR`): the bridge holds its first address.
    pub pod_cidr: Cidr,
    pub bridge: String,
    pub mtu: u32,
    /// IPAM state: `<agent dir>/ipam`.
    pub ipam_dir: PathBuf,
    /// Other state: `<agent dir>/network` (`hostports/<pod uid>`, so a restarted daemon
    /// publishes running pods' hostPorts again before each pod syncs).
    pub state_dir: PathBuf,
}

impl NetworkConfig {
    pub fn new(cluster_cidr: Cidr, pod_cidr: Cidr, agent_dir: &Path) -> NetworkConfig {
        NetworkConfig {
            cluster_cidr,
            pod_cidr,
            bridge: BRIDGE.into(),
            mtu: DEFAULT_MTU,
            ipam_dir: agent_dir.join("ipam"),
            state_dir: agent_dir.join("network"),
        }
    }
}

/// A pod's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddresses {
    /// One address per family, with the subnet's prefix length (IPv4 first).
    pub ips: Vec<Cidr>,
    pub gateways: Vec<IpAddr>,
    /// The host side of the veth pair.
    pub host_veth: String,
}

impl PodAddresses {
    /// The plain addresses, as `status.podIPs` lists them.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|c| c.addr).collect()
    }
}

/// The host-side veth name of a pod: `veth` + 8 hex digits of a hash of its uid (15 bytes fit
/// IFNAMSIZ).
pub fn veth_name(pod_uid: &str) -> String {
    let h = Sha256::digest(pod_uid.as_bytes());
    format!("veth{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

struct Attached {
    addrs: PodAddresses,
    host_ports: Vec<HostPort>,
}

/// The node's pod network: the bridge, the table, and the pods attached to it.
pub struct PodNetwork {
    cfg: NetworkConfig,
    ipam: Ipam,
    pods: Mutex<BTreeMap<String, Attached>>,
    /// hostPorts of pods attached by an earlier process and not attached again yet.
    restored: Mutex<BTreeMap<String, (IpAddr, Vec<HostPort>)>>,
    /// The last table text loaded; rules are only re-applied when it changes.
    rendered: Mutex<String>,
    /// The bridge's link index, so attaching a pod does not look the bridge up again.
    bridge_index: Mutex<u32>,
}

impl PodNetwork {
    /// Creates the bridge (idempotent), turns on forwarding and loads the table.
    pub fn setup(cfg: NetworkConfig) -> Result<PodNetwork> {
        let _span = info_span!("pod_network", pod_cidr = %cfg.pod_cidr).entered();
        let ipam = Ipam::open(&cfg.ipam_dir, cfg.pod_cidr, 0)?;
        let (bridge, gw, prefix, mtu) = (
            cfg.bridge.clone(),
            cfg.pod_cidr.gateway(),
            cfg.pod_cidr.prefix,
            cfg.mtu,
        );
        let bridge_index = link::run(None, move |h| async move {
            link::ensure_bridge(&h, &bridge, gw, prefix, mtu).await
        })?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        enable_bridge_netfilter();
        // hostPort DNAT of connections to 127.0.0.1 routes loopback-sourced packets to the bridge.
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", cfg.bridge),
            "1",
        )?;
        let hostports = cfg.state_dir.join("hostports");
        std::fs::create_dir_all(&hostports)
            .map_err(io_err(format!("creating {}", hostports.display())))?;
        let mut restored = BTreeMap::new();
        for e in std::fs::read_dir(&hostports)
            .map_err(io_err(format!("reading {}", hostports.display())))?
            .flatten()
        {
            let uid = e.file_name().to_string_lossy().into_owned();
            let ports = std::fs::read_to_string(e.path())
                .map(|t| parse_host_ports(&t))
                .unwrap_or_default();
            match ipam.get(&uid) {
                Some(ip) if !ports.is_empty() => {
                    restored.insert(uid, (ip, ports));
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let net = PodNetwork {
            cfg,
            ipam,
            pods: Mutex::new(BTreeMap::new()),
            restored: Mutex::new(restored),
            rendered: Mutex::new(String::new()),
            bridge_index: Mutex::new(bridge_index),
        };
        net.sync_rules()?;
        info!(bridge = %net.cfg.bridge, gateway = %gw, mtu, "pod network ready");
        Ok(net)
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The addresses of an attached pod, as known to this process.
    pub fn addresses(&self, pod_uid: &str) -> Option<PodAddresses> {
        self.lock_pods().get(pod_uid).map(|a| a.addrs.clone())
    }

    fn lock_pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attached>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts the pod whose network namespace is bind-mounted at `netns` on the bridge: an address,
    /// a veth pair, `eth0` configured, and its host ports in the table. Idempotent: a pod already
    /// attached (also by an earlier process) keeps its address and link.
    pub fn attach(
        &self,
        pod_uid: &str,
        netns: &Path,
        host_ports: &[HostPort],
    ) -> Result<PodAddresses> {
        let _span = info_span!("attach", pod_uid).entered();
        let mut ports = host_ports.to_vec();
        ports.sort();
        ports.dedup();
        if let Some(a) = self.lock_pods().get_mut(pod_uid) {
            if a.host_ports == ports {
                return Ok(a.addrs.clone());
            }
            a.host_ports = ports.clone();
            let addrs = a.addrs.clone();
            self.save_host_ports(pod_uid, &ports)?;
            self.sync_rules()?;
            return Ok(addrs);
        }
        let started = Instant::now();
        let ip = self.ipam.allocate(pod_uid)?;
        let prefix = self.cfg.pod_cidr.prefix;
        let gateway = self.cfg.pod_cidr.gateway();
        let host = veth_name(pod_uid);
        // A link left by an earlier process is kept if the pod side carries the address.
        let existing = {
            let host = host.clone();
            link::run(None, move |h| async move { link::index(&h, &host).await })?
        };
        let configured = existing.is_some()
            && link::run(Some(netns.to_path_buf()), |h| async move {
                link::pod_addresses(&h).await
            })?
            .contains(&ip);
        if !configured {
            let ns = File::open(netns).map_err(io_err(format!("opening {}", netns.display())))?;
            let (bridge, mtu, host2) = (self.cfg.bridge.clone(), self.cfg.mtu, host.clone());
            let (gw, pre, bprefix) = (gateway, prefix, prefix);
            let known_bridge = *self.bridge_index.lock().unwrap_or_else(|p| p.into_inner());
            let stale = existing.is_some();
            let bridge_index = link::run(None, move |h| async move {
                if stale {
                    link::delete(&h, &host2).await?;
                }
                if link::create_veth(&h, &host2, &ns, known_bridge, mtu)
                    .await
                    .is_ok()
                {
                    return Ok(known_bridge);
                }
                // The bridge went away or was re-created (killall, an admin): set it up again.
                link::delete(&h, &host2).await?;
                let br = link::ensure_bridge(&h, &bridge, gw, bprefix, mtu).await?;
                link::create_veth(&h, &host2, &ns, br, mtu).await?;
                Ok(br)
            })?;
            *self.bridge_index.lock().unwrap_or_else(|p| p.into_inner()) = bridge_index;
            let res = link::run(Some(netns.to_path_buf()), move |h| async move {
                link::configure_pod(&h, ip, pre, gw).await
            });
            if let Err(e) = res {
                let host2 = host.clone();
                let _ = link::run(None, move |h| async move { link::delete(&h, &host2).await });
                return Err(e);
            }
        }
        let addrs = PodAddresses {
            ips: vec![Cidr { addr: ip, prefix }],
            gateways: vec![gateway],
            host_veth: host,
        };
        self.save_host_ports(pod_uid, &ports)?;
        let had_ports = !ports.is_empty()
            || self
                .restored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(pod_uid)
                .is_some();
        self.lock_pods().insert(
            pod_uid.to_string(),
            Attached {
                addrs: addrs.clone(),
                host_ports: ports,
            },
        );
        if had_ports {
            self.sync_rules()?;
        }
        info!(
            %ip,
            veth = %addrs.host_veth,
            reused = configured,
            elapsed_us = started.elapsed().as_micros() as u64,
            "pod attached"
        );
        Ok(addrs)
    }

    /// Removes the pod's veth pair (if still there) and releases its address; works when the
    /// namespace is already gone. Idempotent.
    pub fn detach(&self, pod_uid: &str) -> Result<()> {
        let _span = info_span!("detach", pod_uid).entered();
        let started = Instant::now();
        let had = self.lock_pods().remove(pod_uid);
        let had_restored = self
            .restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_uid)
            .is_some();
        self.save_host_ports(pod_uid, &[])?;
        let host = veth_name(pod_uid);
        let removed = link::run(None, move |h| async move { link::delete(&h, &host).await })?;
        let freed = self.ipam.release(pod_uid)?;
        if had_restored || had.is_some_and(|a| !a.host_ports.is_empty()) {
            self.sync_rules()?;
        }
        if removed || !freed.is_empty() {
            info!(
                ?freed,
                elapsed_us = started.elapsed().as_micros() as u64,
                "pod detached"
            );
        }
        Ok(())
    }

    /// Detaches every pod holding an address or a veth here that `keep` does not accept (after
    /// a restart: pods deleted while the daemon was down). Returns the uids released.
    pub fn remove_orphans(&self, keep: &HashSet<String>) -> Result<Vec<String>> {
        let mut gone: Vec<String> = self
            .ipam
            .allocations()
            .into_iter()
            .map(|(_, owner)| owner)
            .filter(|o| !keep.contains(o))
            .collect();
        gone.sort();
        gone.dedup();
        for uid in &gone {
            self.detach(uid)?;
        }
        // Veths on the bridge that belong to no kept pod (their address file already gone).
        let wanted: HashSet<String> = keep.iter().map(|u| veth_name(u)).collect();
        let bridge = self.cfg.bridge.clone();
        let stray = link::run(None, move |h| async move {
            let Some(br) = link::index(&h, &bridge).await? else {
                return Ok(Vec::new());
            };
            let mut deleted = Vec::new();
            for name in link::ports_of(&h, br).await? {
                if name.starts_with("veth") && !wanted.contains(&name) {
                    link::delete(&h, &name).await?;
                    deleted.push(name);
                }
            }
            Ok(deleted)
        })?;
        if !stray.is_empty() {
            info!(?stray, "removed stray veths");
        }
        Ok(gone)
    }

    /// Writes (or, for none, removes) the pod's hostPorts file.
    fn save_host_ports(&self, pod_uid: &str, ports: &[HostPort]) -> Result<()> {
        let path = self.cfg.state_dir.join("hostports").join(pod_uid);
        if ports.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(io_err(format!("removing {}", path.display()))(e))
                }
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format_host_ports(ports))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Renders the table from the attached (and restored) pods and loads it when the text
    /// changed.
    fn sync_rules(&self) -> Result<()> {
        let mut by_uid: BTreeMap<String, (IpAddr, Vec<HostPort>)> = self
            .restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (uid, a) in self.lock_pods().iter() {
            by_uid.remove(uid);
            if let Some(c) = a.addrs.ips.iter().find(|c| c.addr.is_ipv4()) {
                if !a.host_ports.is_empty() {
                    by_uid.insert(uid.clone(), (c.addr, a.host_ports.clone()));
                }
            }
        }
        let host_ports = by_uid.into_values().collect();
        let text = nft::render(&nft::Rules {
            cluster_cidr: self.cfg.cluster_cidr,
            bridge: self.cfg.bridge.clone(),
            host_ports,
        });
        let mut last = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        if *last == text {
            return Ok(());
        }
        nft::apply(&text)?;
        debug!(bytes = text.len(), "nftables table loaded");
        *last = text;
        Ok(())
    }
}

/// One line per port: `tcp|udp <hostPort> <containerPort> <hostIP or ->`.
fn format_host_ports(ports: &[HostPort]) -> String {
    ports
        .iter()
        .map(|p| {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let ip = p.host_ip.map_or("-".to_string(), |i| i.to_string());
            format!("{proto} {} {} {ip}\n", p.host_port, p.container_port)
        })
        .collect()
}

fn parse_host_ports(text: &str) -> Vec<HostPort> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let protocol = match f.next()? {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            let host_port = f.next()?.parse().ok()?;
            let container_port = f.next()?.parse().ok()?;
            let host_ip = match f.next()? {
                "-" => None,
                ip => Some(ip.parse().ok()?),
            };
            Some(HostPort {
                protocol,
                host_port,
                container_port,
                host_ip,
            })
        })
        .collect()
}

/// Pods on one bridge talk at L2; their packets meet the IPv4 nftables hooks (Service DNAT and
/// its undoing on replies, NetworkPolicy) only with br_netfilter and `bridge-nf-call-iptables`,
/// which kube-proxy and K3s require too. Loads the module when it is one (K3s does the same)
/// and turns the sysctl on; without it the node still works, minus those features, so a
/// failure is a warning.
fn enable_bridge_netfilter() {
    const SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !Path::new(SYSCTL).exists() {
        let loaded = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .is_ok_and(|s| s.success());
        if !loaded {
            warn!("br_netfilter is not available: Services and NetworkPolicy between pods of this node will not work");
            return;
        }
    }
    if let Err(e) = write_sysctl(SYSCTL, "1") {
        warn!(error = %e, "turning on bridge-nf-call-iptables");
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(io_err(format!("writing {path}")))
}

/// Removes the bridge, every veth on it, the nftables table and the given state directories
/// (IPAM, network state) — for tests and an uninstall (`k3rs killall`).
pub fn cleanup(bridge: &str, state_dirs: &[&Path]) -> Result<()> {
    let bridge = bridge.to_string();
    link::run(None, move |h| async move {
        if let Some(br) = link::index(&h, &bridge).await? {
            for name in link::ports_of(&h, br).await? {
                link::delete(&h, &name).await?;
            }
            link::delete(&h, &bridge).await?;
        }
        Ok(())
    })?;
    if let Err(e) = nft::delete_table() {
        warn!(error = %e, "removing the nftables table");
        return Err(e);
    }
    for dir in state_dirs {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", dir.display()))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        let a = veth_name("0b4f6c1e-8a2d-4c59-9e61-3f1a2b3c4d5e");
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, veth_name("0b4f6c1e-8a2d-4c59-9e61-3f1a2b3c4d5e"));
        assert_ne!(a, veth_name("another"));
    }

    #[test]
    fn host_ports_file_round_trips() {
        let ports = vec![
            HostPort {
                protocol: Protocol::Tcp,
                host_port: 8080,
                container_port: 80,
                host_ip: None,
            },
            HostPort {
                protocol: Protocol::Udp,
                host_port: 5353,
                container_port: 53,
                host_ip: Some("10.0.0.1".parse().unwrap()),
            },
        ];
        let text = format_host_ports(&ports);
        assert_eq!(text, "tcp 8080 80 -\nudp 5353 53 10.0.0.1\n");
        assert_eq!(parse_host_ports(&text), ports);
        assert!(parse_host_ports("sctp 1 2 -\ngarbage\n").is_empty());
    }
}
