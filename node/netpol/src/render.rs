//! NetworkPolicy objects → the body of the `ip k3rs-policy` table, as nft text.
//!
//! Each pod on this node that a policy isolates gets a chain per direction, reached through a
//! verdict map keyed by its address. An ingress chain `accept`s what a rule allows; an egress
//! chain `return`s it, so the packet still meets the destination's ingress chain; both end in a
//! drop. Replies pass through `ct state established,related`, as policies are about connections.

use k3rs_client::labels;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// What the ruleset is computed from.
pub struct Inputs<'a> {
    pub policies: &'a [Value],
    pub pods: &'a [Value],
    pub namespaces: &'a [Value],
    pub node_name: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The address of the other end of the connection.
    fn peer_field(self) -> &'static str {
        match self {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        }
    }
    fn allow(self) -> &'static str {
        match self {
            Direction::Ingress => "accept",
            Direction::Egress => "return",
        }
    }
    fn policy_type(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
    fn rules_field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

struct PodRef<'a> {
    ip: &'a str,
    namespace: &'a str,
    pod: &'a Value,
}

/// One peer of a rule: some pods, or an address block.
enum Peer<'a> {
    Pods(Vec<&'a PodRef<'a>>),
    Block { cidr: String, except: Vec<String> },
}

/// Renders the table body (chains and rules, without the `table` line).
pub fn render(inp: &Inputs) -> String {
    let pods: Vec<PodRef> = inp
        .pods
        .iter()
        .filter_map(|p| {
            Some(PodRef {
                ip: crate::pod_ip(p)?,
                namespace: p.pointer("/metadata/namespace").and_then(Value::as_str)?,
                pod: p,
            })
        })
        .collect();
    let ns_labels: BTreeMap<&str, &Value> = inp
        .namespaces
        .iter()
        .filter_map(|n| {
            Some((
                n.pointer("/metadata/name")?.as_str()?,
                &n["metadata"]["labels"],
            ))
        })
        .collect();
    let mut policies: Vec<&Value> = inp.policies.iter().collect();
    policies.sort_by_key(|p| (namespace_of(p), name_of(p)));

    let mut local: Vec<&PodRef> = pods
        .iter()
        .filter(|p| p.pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(inp.node_name))
        .collect();
    local.sort_by_key(|p| (p.namespace, name_of(p.pod)));

    let mut out = String::new();
    let mut chains = String::new();
    let mut maps: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
    let mut sets = PeerSets::default();
    for (i, target) in local.iter().enumerate() {
        let selecting: Vec<&Value> = policies
            .iter()
            .copied()
            .filter(|pol| {
                namespace_of(pol) == target.namespace
                    && selects(
                        &pol["spec"]["podSelector"],
                        &target.pod["metadata"]["labels"],
                    )
            })
            .collect();
        for (d, dir) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let isolating: Vec<&Value> = selecting
                .iter()
                .copied()
                .filter(|pol| policy_types(pol).contains(&dir.policy_type()))
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let chain = format!("{}-{i}", dir.rules_field());
            let _ = writeln!(chains, "  # {}/{}", target.namespace, name_of(target.pod));
            let _ = writeln!(chains, "  chain {chain} {{");
            for pol in isolating {
                let _ = writeln!(chains, "    # {}/{}", namespace_of(pol), name_of(pol));
                for rule in pol["spec"][dir.rules_field()]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    for line in rule_lines(rule, dir, pol, target, &pods, &ns_labels, &mut sets) {
                        let _ = writeln!(chains, "    {line}");
                    }
                }
            }
            let _ = writeln!(chains, "    counter drop\n  }}");
            maps[d].push((target.ip.to_string(), chain));
        }
    }

    out.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    out.push_str("    ct state established,related accept\n");
    for (d, field) in [(1, "saddr"), (0, "daddr")] {
        if maps[d].is_empty() {
            continue;
        }
        let elems: Vec<String> = maps[d]
            .iter()
            .map(|(ip, chain)| format!("{ip} : jump {chain}"))
            .collect();
        let _ = writeln!(out, "    ip {field} vmap {{ {} }}", elems.join(", "));
    }
    out.push_str("  }\n");
    for (elements, n) in &sets.by_elements {
        let _ = writeln!(
            out,
            "  set peers-{n} {{\n    type ipv4_addr\n    elements = {{ {elements} }}\n  }}"
        );
    }
    out.push_str(&chains);
    out
}

/// Peer address lists shared by many rules (one policy selects many pods): each distinct list
/// becomes one named set, so the table holds it once instead of once per rule.
#[derive(Default)]
struct PeerSets {
    by_elements: BTreeMap<String, usize>,
}

impl PeerSets {
    /// The nft match of `field` against these addresses: inline for one, a set for more.
    fn matcher(&mut self, field: &str, ips: BTreeSet<&str>) -> String {
        if ips.len() == 1 {
            return format!("ip {field} {}", ips.into_iter().next().unwrap_or_default());
        }
        let elements = ips.into_iter().collect::<Vec<_>>().join(", ");
        let next = self.by_elements.len();
        let n = *self.by_elements.entry(elements).or_insert(next);
        format!("ip {field} @peers-{n}")
    }
}

fn namespace_of(v: &Value) -> &str {
    v.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A policy's `podSelector` is required; a missing one is read as the empty (select-all) one.
fn selects(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return true;
    }
    labels::matches(selector, labels)
}

/// `policyTypes`, or its default: Ingress, plus Egress when the policy has egress rules.
fn policy_types(pol: &Value) -> Vec<&str> {
    if let Some(t) = pol["spec"]["policyTypes"].as_array() {
        return t.iter().filter_map(Value::as_str).collect();
    }
    let mut t = vec!["Ingress"];
    if pol["spec"]["egress"].is_array() {
        t.push("Egress");
    }
    t
}

/// The nft lines of one ingress or egress rule of `pol`, seen from `target` (the isolated pod).
fn rule_lines(
    rule: &Value,
    dir: Direction,
    pol: &Value,
    target: &PodRef,
    pods: &[PodRef],
    ns_labels: &BTreeMap<&str, &Value>,
    sets: &mut PeerSets,
) -> Vec<String> {
    let verdict = dir.allow();
    let field = dir.peer_field();
    let ports: Vec<&Value> = rule["ports"].as_array().into_iter().flatten().collect();
    let peers_json: Vec<&Value> = rule[dir.peers_field()]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    // Named ports of an ingress rule name the target's ports; of an egress rule, each peer's.
    let port_exprs = |resolve_on: Option<&Value>| -> Vec<String> {
        if ports.is_empty() {
            return vec![String::new()];
        }
        ports
            .iter()
            .filter_map(|p| port_expr(p, resolve_on))
            .collect()
    };
    let mut lines = Vec::new();
    if peers_json.is_empty() {
        let resolve_on = (dir == Direction::Ingress).then_some(target.pod);
        for pe in port_exprs(resolve_on) {
            lines.push(join(&[&pe, verdict]));
        }
        return lines;
    }
    for peer in peers_json
        .iter()
        .filter_map(|p| resolve_peer(p, namespace_of(pol), pods, ns_labels))
    {
        match peer {
            Peer::Block { cidr, except } => {
                let mut m = format!("ip {field} {cidr}");
                if !except.is_empty() {
                    let _ = write!(m, " ip {field} != {{ {} }}", except.join(", "));
                }
                let resolve_on = (dir == Direction::Ingress).then_some(target.pod);
                for pe in port_exprs(resolve_on) {
                    lines.push(join(&[&m, &pe, verdict]));
                }
            }
            Peer::Pods(list) if list.is_empty() => {}
            Peer::Pods(list) => {
                let named = ports.iter().any(|p| p["port"].is_string());
                if dir == Direction::Egress && named {
                    for p in list {
                        let m = format!("ip {field} {}", p.ip);
                        for pe in port_exprs(Some(p.pod)) {
                            lines.push(join(&[&m, &pe, verdict]));
                        }
                    }
                } else {
                    let m = sets.matcher(field, list.iter().map(|p| p.ip).collect());
                    let resolve_on = (dir == Direction::Ingress).then_some(target.pod);
                    for pe in port_exprs(resolve_on) {
                        lines.push(join(&[&m, &pe, verdict]));
                    }
                }
            }
        }
    }
    lines
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn resolve_peer<'a>(
    peer: &Value,
    policy_ns: &str,
    pods: &'a [PodRef<'a>],
    ns_labels: &BTreeMap<&str, &Value>,
) -> Option<Peer<'a>> {
    if let Some(block) = peer.get("ipBlock").filter(|b| b.is_object()) {
        let cidr = ipv4_cidr(block["cidr"].as_str()?)?;
        let except = block["except"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| ipv4_cidr(e.as_str()?))
            .collect();
        return Some(Peer::Block { cidr, except });
    }
    let ns_sel = peer.get("namespaceSelector").filter(|s| s.is_object());
    let pod_sel = peer.get("podSelector").filter(|s| s.is_object());
    if ns_sel.is_none() && pod_sel.is_none() {
        return None;
    }
    let in_namespace = |ns: &str| match ns_sel {
        None => ns == policy_ns,
        Some(sel) => {
            let implicit = serde_json::json!({ "kubernetes.io/metadata.name": ns });
            let labels = match ns_labels.get(ns) {
                Some(l) if l.is_object() => l,
                _ => &implicit,
            };
            labels::matches(sel, labels)
        }
    };
    Some(Peer::Pods(
        pods.iter()
            .filter(|p| in_namespace(p.namespace))
            .filter(|p| pod_sel.is_none_or(|s| labels::matches(s, &p.pod["metadata"]["labels"])))
            .collect(),
    ))
}

/// A normalised IPv4 CIDR (a bare address is a /32); IPv6 blocks are left to the IPv6 table.
fn ipv4_cidr(s: &str) -> Option<String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(format!("{}/{len}", Ipv4Addr::from(u32::from(ip) & mask)))
}

/// The nft match of one `NetworkPolicyPort`; `None` when a named port does not resolve.
fn port_expr(p: &Value, resolve_on: Option<&Value>) -> Option<String> {
    let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let port = match &p["port"] {
        Value::Null => return Some(format!("meta l4proto {proto}")),
        Value::Number(n) => n.as_u64().filter(|n| (1..=65535).contains(n))?,
        Value::String(name) => match name.parse::<u64>() {
            Ok(n) => n,
            Err(_) => named_port(resolve_on?, name, &proto)?,
        },
        _ => return None,
    };
    match p["endPort"].as_u64() {
        Some(end) if end > port && end <= 65535 => {
            Some(format!("meta l4proto {proto} th dport {port}-{end}"))
        }
        _ => Some(format!("meta l4proto {proto} th dport {port}")),
    }
}

fn named_port(pod: &Value, name: &str, proto: &str) -> Option<u64> {
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| {
            p["name"].as_str() == Some(name)
                && p["protocol"]
                    .as_str()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
        })
        .and_then(|p| p["containerPort"].as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
               "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                   {"name": "http", "containerPort": 8080},
                   {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
               "status": {"phase": "Running", "podIP": ip}})
    }

    fn policy(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    fn ns(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    fn world() -> (Vec<Value>, Vec<Value>) {
        let pods = vec![
            pod("web", "api", "10.42.0.5", "n1", json!({"app": "api"})),
            pod("web", "client", "10.42.0.6", "n1", json!({"app": "client"})),
            pod("web", "remote", "10.42.1.7", "n2", json!({"app": "client"})),
            pod("ops", "probe", "10.42.0.9", "n1", json!({"app": "probe"})),
        ];
        let namespaces = vec![
            ns("web", json!({"kubernetes.io/metadata.name": "web"})),
            ns(
                "ops",
                json!({"kubernetes.io/metadata.name": "ops", "team": "ops"}),
            ),
        ];
        (pods, namespaces)
    }

    fn rendered(policies: &[Value]) -> String {
        let (pods, namespaces) = world();
        render(&Inputs {
            policies,
            pods: &pods,
            namespaces: &namespaces,
            node_name: "n1",
        })
    }

    #[test]
    fn no_policy_isolates_nothing() {
        let out = rendered(&[]);
        assert!(out.contains("ct state established,related accept"));
        assert!(!out.contains("vmap"), "{out}");
        assert!(!out.contains("drop"), "{out}");
    }

    #[test]
    fn default_deny_gives_local_selected_pods_a_drop_chain() {
        let out = rendered(&[policy("web", "deny", json!({"podSelector": {}}))]);
        // Both local pods of "web" are isolated for ingress, the remote one and "ops" are not.
        assert!(
            out.contains(
                "ip daddr vmap { 10.42.0.5 : jump ingress-1, 10.42.0.6 : jump ingress-2 }"
            ),
            "{out}"
        );
        assert!(!out.contains("10.42.1.7"), "{out}");
        assert!(!out.contains("10.42.0.9"), "{out}");
        assert!(!out.contains("saddr vmap"), "{out}");
        assert!(
            out.contains("  chain ingress-1 {\n    # web/deny\n    counter drop\n  }"),
            "{out}"
        );
    }

    #[test]
    fn pod_selector_and_port_allow() {
        let out = rendered(&[policy(
            "web",
            "allow-client",
            json!({"podSelector": {"matchLabels": {"app": "api"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                "ports": [{"port": 80}, {"port": "http"}, {"protocol": "UDP", "port": 5000, "endPort": 5010}]}]}),
        )]);
        assert!(
            out.contains("ip daddr vmap { 10.42.0.5 : jump ingress-1 }"),
            "{out}"
        );
        for l in [
            "set peers-0 {\n    type ipv4_addr\n    elements = { 10.42.0.6, 10.42.1.7 }\n  }",
            "ip saddr @peers-0 meta l4proto tcp th dport 80 accept",
            "ip saddr @peers-0 meta l4proto tcp th dport 8080 accept",
            "ip saddr @peers-0 meta l4proto udp th dport 5000-5010 accept",
        ] {
            assert!(out.contains(l), "missing {l}: {out}");
        }
    }

    #[test]
    fn namespace_selector_ip_block_and_allow_all_rule() {
        let out = rendered(&[
            policy(
                "web",
                "from-ops",
                json!({"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                                             {"ipBlock": {"cidr": "192.168.7.9/16", "except": ["192.168.1.0/24"]}}]}]}),
            ),
            policy("ops", "open", json!({"podSelector": {}, "ingress": [{}]})),
        ]);
        assert!(out.contains("ip saddr 10.42.0.9 accept"), "{out}");
        assert!(
            out.contains("ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24 } accept"),
            "{out}"
        );
        // An empty rule allows everything to the selected pod.
        assert!(
            out.contains("    # ops/open\n    accept\n    counter drop"),
            "{out}"
        );
    }

    #[test]
    fn egress_returns_and_resolves_named_ports_on_each_peer() {
        let out = rendered(&[policy(
            "web",
            "egress",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "http"}]},
                              {"ports": [{"protocol": "UDP", "port": 53}]}]}),
        )]);
        assert!(
            out.contains("ip saddr vmap { 10.42.0.6 : jump egress-2 }"),
            "{out}"
        );
        assert!(!out.contains("daddr vmap"), "{out}");
        assert!(
            out.contains("ip daddr 10.42.0.5 meta l4proto tcp th dport 8080 return"),
            "{out}"
        );
        assert!(out.contains("meta l4proto udp th dport 53 return"), "{out}");
    }

    #[test]
    fn unusable_input_is_skipped_not_fatal() {
        let out = rendered(&[policy(
            "web",
            "odd",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}, {}],
                                                  "ports": [{"port": "nope"}, {"protocol": "ICMP"}]}]}),
        )]);
        assert!(!out.contains("fd00"), "{out}");
        assert!(out.contains("counter drop"), "{out}");
        assert!(!out.contains("nope"), "{out}");
    }

    /// The rendered text is accepted by the kernel's nftables (checked inside a throwaway netns).
    #[test]
    fn kernel_accepts_the_ruleset() {
        if !std::path::Path::new("/usr/sbin/nft").exists() || !nix_root() {
            eprintln!("skipping: needs root and nft");
            return;
        }
        let body = rendered(&[
            policy("web", "deny", json!({"podSelector": {}})),
            policy(
                "web",
                "egress",
                json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress", "Ingress"],
                       "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "http"}]}],
                       "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 80, "endPort": 90}]}]}),
            ),
        ]);
        let name = format!("k3rs-netpol-t{}", std::process::id());
        let run = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
        };
        assert!(run(&["netns", "add", &name]).success());
        let applied = k3rs_nft::Nft::in_netns(&name).replace_table("k3rs-policy", &body);
        run(&["netns", "del", &name]);
        if let Err(e) = applied {
            panic!("{e}\n{body}");
        }
    }

    fn nix_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    }
}
