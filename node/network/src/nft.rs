//! The `ip k3rs-net` nftables table: masquerade for traffic leaving the cluster, forwarding
//! to and from the bridge, and hostPort DNAT. Rendered as text and loaded with `nft -f -` in one
//! transaction that creates, deletes and re-creates the table, so the kernel never sees half a
//! ruleset.

use crate::ipam::Cidr;
use crate::Result;
use std::fmt::Write as _;
use std::net::IpAddr;

/// The table this crate owns.
pub const TABLE: &str = "k3rs-net";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A container port published on the node (`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
    /// `hostIP`: only traffic to this node address is forwarded; None for every local address.
    pub host_ip: Option<IpAddr>,
}

/// What the table is rendered from.
#[derive(Debug, Clone)]
pub struct Rules {
    pub cluster_cidr: Cidr,
    pub bridge: String,
    /// (pod address, its host ports), in a stable order.
    pub host_ports: Vec<(IpAddr, Vec<HostPort>)>,
}

/// Renders the whole transaction for `nft -f -`.
pub fn render(r: &Rules) -> String {
    let cc = r.cluster_cidr;
    let br = &r.bridge;
    let mut s = String::new();
    // `add` makes the delete succeed on the first run; the three lines are one transaction.
    let _ = writeln!(s, "add table ip {TABLE}");
    let _ = writeln!(s, "delete table ip {TABLE}");
    let _ = writeln!(s, "table ip {TABLE} {{");
    s.push_str("  chain hostports {\n");
    for (ip, ports) in &r.host_ports {
        if !ip.is_ipv4() {
            continue;
        }
        for p in ports {
            let dst = match p.host_ip {
                Some(IpAddr::V4(h)) if !h.is_unspecified() => format!("ip daddr {h} "),
                Some(IpAddr::V6(h)) if !h.is_unspecified() => continue,
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "    {dst}{proto} dport {hp} dnat to {ip}:{cp}",
                proto = p.protocol.as_str(),
                hp = p.host_port,
                cp = p.container_port
            );
        }
    }
    s.push_str("  }\n");
    // Traffic from outside to any local address (or the hostIP) of the node.
    s.push_str("  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n    fib daddr type local jump hostports\n  }\n");
    // The node's own connections, including to 127.0.0.1.
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump hostports\n  }\n");
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;"
    );
    // hostPort traffic DNATed into the bridge from 127.0.0.0/8 (the source must not stay
    // loopback) or from a pod (hairpin: the backend would answer the pod directly, bypassing the
    // reverse NAT). Matched on the hostPort backends only, so Service traffic (another table's
    // DNAT) keeps its pod source.
    let backends: Vec<String> = r
        .host_ports
        .iter()
        .filter(|(ip, _)| ip.is_ipv4())
        .flat_map(|(ip, ports)| {
            ports
                .iter()
                .map(move |p| format!("{ip} . {} . {}", p.protocol.as_str(), p.container_port))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !backends.is_empty() {
        let _ = writeln!(
            s,
            "    oifname \"{br}\" ct status dnat ip saddr {{ 127.0.0.0/8, {cc} }} ip daddr . meta l4proto . th dport {{ {} }} masquerade",
            backends.join(", ")
        );
    }
    // Pods reaching anything outside the cluster network appear as the node.
    let _ = writeln!(
        s,
        "    ip saddr {cc} ip daddr != {cc} oifname != \"{br}\" masquerade"
    );
    s.push_str("  }\n");
    // Hosts often default FORWARD to drop: let the bridge's traffic through.
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{br}\" accept\n    oifname \"{br}\" accept\n  }}"
    );
    s.push_str("}\n");
    s
}

/// Loads a rendered transaction.
pub fn apply(text: &str) -> Result<()> {
    Ok(k3rs_nft::Nft::new().apply(text)?)
}

/// Removes the table if it exists.
pub fn delete_table() -> Result<()> {
    Ok(k3rs_nft::Nft::new().delete_table(TABLE)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_masquerade_forward_and_host_ports() {
        let r = Rules {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            bridge: "cni0".into(),
            host_ports: vec![(
                "10.42.0.5".parse().unwrap(),
                vec![
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
                        host_ip: Some("192.168.1.2".parse().unwrap()),
                    },
                    HostPort {
                        protocol: Protocol::Tcp,
                        host_port: 9,
                        container_port: 9,
                        host_ip: Some("0.0.0.0".parse().unwrap()),
                    },
                ],
            )],
        };
        let t = render(&r);
        assert!(t.starts_with("add table ip k3rs-net\ndelete table ip k3rs-net\n"));
        assert!(t.contains("    tcp dport 8080 dnat to 10.42.0.5:80\n"));
        assert!(t.contains("    ip daddr 192.168.1.2 udp dport 5353 dnat to 10.42.0.5:53\n"));
        // hostIP 0.0.0.0 means every address, like no hostIP.
        assert!(t.contains("    tcp dport 9 dnat to 10.42.0.5:9\n"));
        assert!(t.contains(
            "ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 oifname != \"cni0\" masquerade"
        ));
        assert!(t.contains("iifname \"cni0\" accept"));
        assert!(t.contains(
            "ct status dnat ip saddr { 127.0.0.0/8, 10.42.0.0/16 } ip daddr . meta l4proto . th dport { 10.42.0.5 . tcp . 80, 10.42.0.5 . tcp . 9, 10.42.0.5 . udp . 53 } masquerade"
        ));
        let none = render(&Rules {
            host_ports: Vec::new(),
            ..r
        });
        assert!(!none.contains("ct status dnat"), "{none}");
        assert_eq!(t.matches("jump hostports").count(), 2);
    }
}
