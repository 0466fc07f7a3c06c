//! The whole `ip k3rs` table as nft text, from (config, service ports). Pure: no I/O.
//!
//! The layout follows kube-proxy's nftables mode. Lookups are verdict maps keyed by
//! `ip daddr . meta l4proto . th dport` (and `meta l4proto . th dport` for NodePorts on the
//! node's IPs), so a packet costs the same whatever the number of Services:
//!
//! - `nat-prerouting` / `nat-output` (dstnat) → `services`: `@service-ips` and
//!   `@service-nodeports` jump to the Service port's chains, which pick an endpoint
//!   (`numgen random mod N`, or a ClientIP affinity set) and DNAT to it.
//! - `filter-*` hooks reject (`@no-endpoint-*`: TCP reset / ICMP port unreachable) or drop
//!   (traffic policy Local and no local endpoint) new connections to Services that have no
//!   usable endpoint, and reject ports a ClusterIP does not serve.
//! - Masquerade: packets are marked (`mark-for-masquerade`) in dstnat and SNATed in
//!   `nat-postrouting`: ClusterIP traffic not from a pod, external traffic with
//!   `externalTrafficPolicy: Cluster`, and hairpin (a pod reaching itself through a Service).

use crate::model::{service_ports, Endpoint, ServicePort};
use crate::ProxyConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The table k3rs owns (family `ip`).
pub const TABLE: &str = "k3rs";
/// Up to this many endpoints, a Service port picks one with a cascade of `numgen` rules; above,
/// with one `numgen random mod N vmap` (constant time per new connection).
pub const CASCADE_MAX: usize = 16;
/// Packet mark bit asking `nat-postrouting` to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The ruleset for Services and EndpointSlices (JSON objects as the API returns them).
pub fn render(config: &ProxyConfig, services: &[Value], slices: &[Value]) -> String {
    render_ports(config, &service_ports(services, slices))
}

fn hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A chain or set name: prefix, hash of the full identity, and as much of the readable
/// identity as fits (nft names are at most 255 bytes).
fn name(prefix: &str, identity: &str) -> String {
    let mut n = format!("{prefix}-{}-{identity}", hash(identity));
    n.truncate(200);
    n
}

/// The chain that load-balances a Service port over its cluster-wide endpoints.
pub fn service_chain(sp: &ServicePort) -> String {
    name("svc", &sp.key())
}

fn local_chain(sp: &ServicePort) -> String {
    name("local", &sp.key())
}

fn external_chain(sp: &ServicePort) -> String {
    name("ext", &sp.key())
}

/// The chain that DNATs a Service port's traffic to one endpoint.
pub fn endpoint_chain(sp: &ServicePort, ep: &Endpoint) -> String {
    name("ep", &format!("{}__{}/{}", sp.key(), ep.ip, ep.port))
}

fn affinity_set(sp: &ServicePort, ep: &Endpoint) -> String {
    name("aff", &format!("{}__{}/{}", sp.key(), ep.ip, ep.port))
}

#[derive(Default)]
struct Table {
    cluster_ips: BTreeSet<Ipv4Addr>,
    service_ips: BTreeMap<String, String>,
    service_nodeports: BTreeMap<String, String>,
    no_endpoint_services: BTreeMap<String, String>,
    no_endpoint_nodeports: BTreeMap<String, String>,
    affinity_sets: BTreeMap<String, u32>,
    chains: BTreeMap<String, Vec<String>>,
}

impl Table {
    /// A load-balancing chain over `eps` (with affinity when the Service asks for it).
    fn balance(&mut self, chain: String, sp: &ServicePort, eps: &[&Endpoint]) {
        let mut rules = Vec::new();
        if sp.affinity_timeout.is_some() {
            for ep in eps {
                rules.push(format!(
                    "ip saddr @{} goto {}",
                    affinity_set(sp, ep),
                    endpoint_chain(sp, ep)
                ));
            }
        }
        if eps.len() <= CASCADE_MAX {
            // Rule i takes 1/(N-i) of what reaches it: uniform, and no anonymous set (the
            // kernel binds each one by walking the whole transaction, which is quadratic in
            // the size of the table; with one per Service, 1,000 Services took 3x longer).
            let n = eps.len();
            for (i, ep) in eps[..n - 1].iter().enumerate() {
                rules.push(format!(
                    "numgen random mod {} == 0 goto {}",
                    n - i,
                    endpoint_chain(sp, ep)
                ));
            }
            rules.push(format!("goto {}", endpoint_chain(sp, eps[n - 1])));
        } else {
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(sp, ep)))
                .collect();
            rules.push(format!(
                "numgen random mod {} vmap {{ {} }}",
                eps.len(),
                arms.join(", ")
            ));
        }
        self.chains.insert(chain, rules);
        for ep in eps {
            self.endpoint(sp, ep);
        }
    }

    fn endpoint(&mut self, sp: &ServicePort, ep: &Endpoint) {
        let chain = endpoint_chain(sp, ep);
        if self.chains.contains_key(&chain) {
            return;
        }
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(timeout) = sp.affinity_timeout {
            let set = affinity_set(sp, ep);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            self.affinity_sets.insert(set, timeout);
        }
        rules.push(format!(
            "meta l4proto {} dnat to {}:{}",
            sp.protocol.nft(),
            ep.ip,
            ep.port
        ));
        self.chains.insert(chain, rules);
    }
}

/// The ruleset for already-resolved service ports.
pub fn render_ports(config: &ProxyConfig, ports: &[ServicePort]) -> String {
    let skip: BTreeSet<Ipv4Addr> = config.local_service_ips.iter().copied().collect();
    let node_ips: BTreeSet<Ipv4Addr> = config
        .node_ips
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    let mut t = Table::default();
    for sp in ports {
        let proto = sp.protocol.nft();
        let c = sp.categorize(&config.node_name);
        let svc = (!c.cluster.is_empty()).then(|| service_chain(sp));
        let local = (!c.local.is_empty()).then(|| local_chain(sp));
        if let Some(chain) = &svc {
            t.balance(chain.clone(), sp, &c.cluster);
        }
        if let Some(chain) = &local {
            t.balance(chain.clone(), sp, &c.local);
        }
        // Without any usable endpoint: reject; with endpoints but none for this traffic
        // (policy Local): drop, as kube-proxy does.
        let no_endpoints = if c.any { "drop" } else { "goto reject-chain" };

        if !skip.contains(&sp.cluster_ip) {
            t.cluster_ips.insert(sp.cluster_ip);
            let key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);
            let internal = if sp.internal_policy_local {
                &local
            } else {
                &svc
            };
            match internal {
                Some(chain) => t.service_ips.entry(key).or_insert(format!("goto {chain}")),
                None => t
                    .no_endpoint_services
                    .entry(key)
                    .or_insert(no_endpoints.to_string()),
            };
        }

        if !sp.externally_accessible() {
            continue;
        }
        let external = if sp.external_policy_local {
            &local
        } else {
            &svc
        };
        let verdict = match external {
            Some(target) => {
                let ext = external_chain(sp);
                let mut rules = Vec::new();
                if sp.external_policy_local {
                    // Pods and the node itself are not "external": they may use any endpoint.
                    if let Some(svc) = &svc {
                        rules.push(format!("ip saddr {} goto {svc}", config.cluster_cidr));
                        rules.push("fib saddr type local jump mark-for-masquerade".to_string());
                        rules.push(format!("fib saddr type local goto {svc}"));
                    }
                } else {
                    rules.push("jump mark-for-masquerade".to_string());
                }
                rules.push(format!("goto {target}"));
                t.chains.insert(ext.clone(), rules);
                Ok(format!("goto {ext}"))
            }
            None => Err(no_endpoints.to_string()),
        };
        for ip in sp.external_ips.iter().filter(|ip| !ip.is_loopback()) {
            let key = format!("{ip} . {proto} . {}", sp.port);
            match &verdict {
                Ok(v) => t.service_ips.entry(key).or_insert(v.clone()),
                Err(v) => t.no_endpoint_services.entry(key).or_insert(v.clone()),
            };
        }
        if let Some(np) = sp.node_port {
            let key = format!("{proto} . {np}");
            match &verdict {
                Ok(v) => t.service_nodeports.entry(key).or_insert(v.clone()),
                Err(v) => t.no_endpoint_nodeports.entry(key).or_insert(v.clone()),
            };
        }
    }
    // A destination served by one Service is not rejected because another has no endpoints.
    t.no_endpoint_services
        .retain(|k, _| !t.service_ips.contains_key(k));
    t.no_endpoint_nodeports
        .retain(|k, _| !t.service_nodeports.contains_key(k));
    write_table(config, &node_ips, &skip, &t)
}

fn write_set(out: &mut String, name: &str, ty: &str, elements: &BTreeSet<Ipv4Addr>) {
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {ty}");
    if !elements.is_empty() {
        let e: Vec<String> = elements.iter().map(|ip| ip.to_string()).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", e.join(", "));
    }
    out.push_str("\t}\n");
}

fn write_map(out: &mut String, name: &str, key: &str, elements: &BTreeMap<String, String>) {
    let _ = writeln!(out, "\tmap {name} {{\n\t\ttype {key} : verdict");
    if !elements.is_empty() {
        out.push_str("\t\telements = {\n");
        let e: Vec<String> = elements
            .iter()
            .map(|(k, v)| format!("\t\t\t{k} : {v}"))
            .collect();
        out.push_str(&e.join(",\n"));
        out.push_str("\n\t\t}\n");
    }
    out.push_str("\t}\n");
}

fn write_chain(out: &mut String, name: &str, hook: Option<&str>, rules: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(h) = hook {
        let _ = writeln!(out, "\t\t{h}; policy accept;");
    }
    for r in rules {
        let _ = writeln!(out, "\t\t{r}");
    }
    out.push_str("\t}\n");
}

fn write_table(
    config: &ProxyConfig,
    node_ips: &BTreeSet<Ipv4Addr>,
    skip: &BTreeSet<Ipv4Addr>,
    t: &Table,
) -> String {
    let mut out = String::with_capacity(256 + t.chains.len() * 160);
    // One transaction: make sure the table exists, delete it, create it anew.
    let _ = writeln!(
        out,
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    out.push_str("\tcomment \"Kubernetes Services, managed by k3rs\"\n");
    write_set(&mut out, "cluster-ips", "ipv4_addr", &t.cluster_ips);
    write_set(&mut out, "nodeport-ips", "ipv4_addr", node_ips);
    write_set(&mut out, "local-service-ips", "ipv4_addr", skip);
    for (set, timeout) in &t.affinity_sets {
        let _ = writeln!(
            out,
            "\tset {set} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}"
        );
    }
    let key3 = "ipv4_addr . inet_proto . inet_service";
    let key2 = "inet_proto . inet_service";
    write_map(&mut out, "service-ips", key3, &t.service_ips);
    write_map(&mut out, "service-nodeports", key2, &t.service_nodeports);
    write_map(
        &mut out,
        "no-endpoint-services",
        key3,
        &t.no_endpoint_services,
    );
    write_map(
        &mut out,
        "no-endpoint-nodeports",
        key2,
        &t.no_endpoint_nodeports,
    );

    let new = "ct state new";
    write_chain(
        &mut out,
        "filter-input",
        Some("type filter hook input priority -110"),
        &[
            format!("{new} jump nodeport-endpoints-check"),
            format!("{new} jump service-endpoints-check"),
        ],
    );
    write_chain(
        &mut out,
        "filter-forward",
        Some("type filter hook forward priority -110"),
        &[
            format!("{new} jump service-endpoints-check"),
            format!("{new} jump cluster-ips-check"),
        ],
    );
    write_chain(
        &mut out,
        "filter-output",
        Some("type filter hook output priority -10"),
        &[format!("{new} jump service-endpoints-check")],
    );
    write_chain(
        &mut out,
        "filter-output-post-dnat",
        Some("type filter hook output priority -90"),
        &[format!("{new} jump cluster-ips-check")],
    );
    write_chain(
        &mut out,
        "nat-prerouting",
        Some("type nat hook prerouting priority -100"),
        &["jump services".into()],
    );
    write_chain(
        &mut out,
        "nat-output",
        Some("type nat hook output priority -100"),
        &["jump services".into()],
    );
    write_chain(
        &mut out,
        "nat-postrouting",
        Some("type nat hook postrouting priority 100"),
        &["jump masquerading".into()],
    );
    write_chain(
        &mut out,
        "services",
        None,
        &[
            format!(
                "ip daddr @cluster-ips ip saddr != {} jump mark-for-masquerade",
                config.cluster_cidr
            ),
            "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports".into(),
        ],
    );
    write_chain(
        &mut out,
        "service-endpoints-check",
        None,
        &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into()],
    );
    write_chain(
        &mut out,
        "nodeport-endpoints-check",
        None,
        &["ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports".into()],
    );
    write_chain(
        &mut out,
        "cluster-ips-check",
        None,
        &[
            "ip daddr @local-service-ips return".into(),
            "ip daddr @cluster-ips goto reject-chain".into(),
            format!("ip daddr {} drop", config.service_cidr),
        ],
    );
    write_chain(
        &mut out,
        "reject-chain",
        None,
        &[
            "meta l4proto tcp reject with tcp reset".into(),
            "reject".into(),
        ],
    );
    write_chain(
        &mut out,
        "mark-for-masquerade",
        None,
        &[format!("meta mark set meta mark | {MASQUERADE_MARK:#x}")],
    );
    write_chain(
        &mut out,
        "masquerading",
        None,
        &[
            format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
            format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
            "masquerade fully-random".into(),
        ],
    );
    for (name, rules) in &t.chains {
        write_chain(&mut out, name, None, rules);
    }
    out.push_str("}\n");
    out
}

/// Names of the ClientIP affinity sets in a rendered table.
pub fn affinity_sets(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("\tset ")?.strip_suffix(" {"))
        .filter(|n| n.starts_with("aff-"))
        .collect()
}

/// The rendered table with live affinity entries carried into its sets (re-creating the table
/// would otherwise forget every client's endpoint): each entry keeps the time it has left,
/// capped at the set's timeout.
pub fn with_set_entries(
    text: &str,
    entries: &BTreeMap<String, Vec<(Ipv4Addr, std::time::Duration)>>,
) -> String {
    let mut out = text.to_string();
    for (set, elems) in entries {
        if elems.is_empty() {
            continue;
        }
        let head = format!("\tset {set} {{\n");
        let Some(start) = out.find(&head) else {
            continue;
        };
        let Some(len) = out[start..].find("\n\t}\n") else {
            continue;
        };
        let block = &out[start..start + len];
        let Some(timeout) = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("timeout "))
            .and_then(|t| t.strip_suffix('s'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let list: Vec<String> = elems
            .iter()
            .map(|(ip, left)| {
                let ms = (left.as_millis() as u64).clamp(1, timeout * 1000);
                format!("{ip} timeout {timeout}s expires {ms}ms")
            })
            .collect();
        out.insert_str(
            start + len,
            &format!("\n\t\telements = {{ {} }}", list.join(", ")),
        );
    }
    out
}

/// Deletes the table (the `add` first makes this succeed when it does not exist).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SERVICE_NAME_LABEL;
    use serde_json::json;

    fn config() -> ProxyConfig {
        ProxyConfig::new(
            "n1",
            vec![Ipv4Addr::new(192, 168, 5, 1), Ipv4Addr::LOCALHOST],
        )
    }

    fn svc(name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": name}, "spec": spec})
    }

    fn slice(svc: &str, eps: &[(&str, &str, bool)]) -> Value {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, node, ready)| {
                json!({"addresses": [ip], "nodeName": node,
                "conditions": {"ready": ready, "serving": ready, "terminating": false}})
            })
            .collect();
        json!({"metadata": {"namespace": "default", "name": format!("{svc}-x"),
                "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"name": "", "protocol": "TCP", "port": 8080}],
            "endpoints": eps})
    }

    fn element_verdict(text: &str, key: &str) -> Option<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{key} : ")))
            .map(|v| v.trim_end_matches(',').to_string())
    }

    fn chain<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        let head = format!("chain {name} {{");
        text.lines()
            .map(str::trim)
            .skip_while(|l| *l != head)
            .skip(1)
            .take_while(|l| *l != "}")
            .collect()
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let services = [svc(
            "web",
            json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80, "protocol": "TCP"}]}),
        )];
        let slices = [slice(
            "web",
            &[
                ("10.42.0.5", "n1", true),
                ("10.42.0.6", "n2", true),
                ("10.42.0.7", "n2", false),
            ],
        )];
        let text = render(&config(), &services, &slices);
        let v = element_verdict(&text, "10.43.0.20 . tcp . 80").expect("service-ips element");
        let svc_chain = v.strip_prefix("goto ").unwrap();
        let rules = chain(&text, svc_chain);
        assert_eq!(rules.len(), 2);
        assert!(
            rules[0].starts_with("numgen random mod 2 == 0 goto ep-"),
            "{rules:?}"
        );
        assert!(rules[1].starts_with("goto ep-"), "{rules:?}");
        assert!(text.contains("dnat to 10.42.0.5:8080"));
        assert!(text.contains("dnat to 10.42.0.6:8080"));
        assert!(!text.contains("10.42.0.7"), "not-ready endpoint used");
        assert!(
            text.contains("ip saddr 10.42.0.5 jump mark-for-masquerade"),
            "hairpin"
        );
        assert!(text.starts_with("add table ip k3rs\ndelete table ip k3rs\ntable ip k3rs {"));
        // The same input in another order renders the same text.
        let slices2 = [slice(
            "web",
            &[
                ("10.42.0.7", "n2", false),
                ("10.42.0.6", "n2", true),
                ("10.42.0.5", "n1", true),
            ],
        )];
        assert_eq!(text, render(&config(), &services, &slices2));
    }

    #[test]
    fn no_endpoints_reject_and_skipped_ips_get_nothing() {
        let services = [
            svc(
                "empty",
                json!({"clusterIP": "10.43.0.21", "type": "NodePort",
                "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30021}]}),
            ),
            svc(
                "dns",
                json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}),
            ),
            svc(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        ];
        let text = render(&config(), &services, &[]);
        assert_eq!(
            element_verdict(&text, "10.43.0.21 . tcp . 80").as_deref(),
            Some("goto reject-chain")
        );
        assert_eq!(
            element_verdict(&text, "tcp . 30021").as_deref(),
            Some("goto reject-chain")
        );
        assert!(
            !text.contains("10.43.0.10 ."),
            "the DNS IP is answered locally"
        );
        assert!(text.contains("elements = { 10.43.0.21 }"), "cluster-ips");
        assert!(
            text.contains("elements = { 192.168.5.1 }"),
            "nodeport-ips without loopback"
        );
    }

    #[test]
    fn node_ports_and_load_balancer_ips_masquerade_external_traffic() {
        let mut lb = svc(
            "lb",
            json!({"clusterIP": "10.43.0.22", "type": "LoadBalancer", "externalIPs": ["203.0.113.9"],
            "ports": [{"port": 8000, "protocol": "TCP", "nodePort": 30022}]}),
        );
        lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.5.1"}]}});
        let text = render(
            &config(),
            &[lb],
            &[slice("lb", &[("10.42.0.5", "n1", true)])],
        );
        let ext = element_verdict(&text, "tcp . 30022").unwrap();
        assert_eq!(
            element_verdict(&text, "192.168.5.1 . tcp . 8000"),
            Some(ext.clone())
        );
        assert_eq!(
            element_verdict(&text, "203.0.113.9 . tcp . 8000"),
            Some(ext.clone()),
            "externalIPs"
        );
        let rules = chain(&text, ext.strip_prefix("goto ").unwrap());
        assert_eq!(rules[0], "jump mark-for-masquerade");
        assert!(rules[1].starts_with("goto svc-"));
        // Without the LoadBalancer type, status ingress IPs are not used.
        let mut np = svc(
            "np",
            json!({"clusterIP": "10.43.0.26", "type": "NodePort",
            "ports": [{"port": 8000, "protocol": "TCP", "nodePort": 30026}]}),
        );
        np["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.5.1"}]}});
        let text = render(
            &config(),
            &[np],
            &[slice("np", &[("10.42.0.5", "n1", true)])],
        );
        assert!(element_verdict(&text, "192.168.5.1 . tcp . 8000").is_none());
    }

    #[test]
    fn external_traffic_policy_local_keeps_the_source_and_drops_without_local_endpoints() {
        let spec = json!({"clusterIP": "10.43.0.23", "type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30023}]});
        let services = [svc("loc", spec)];
        let text = render(
            &config(),
            &services,
            &[slice(
                "loc",
                &[("10.42.0.5", "n1", true), ("10.42.1.5", "n2", true)],
            )],
        );
        let ext = element_verdict(&text, "tcp . 30023").unwrap();
        let rules = chain(&text, ext.strip_prefix("goto ").unwrap());
        assert!(
            rules[0].starts_with("ip saddr 10.42.0.0/16 goto svc-"),
            "{rules:?}"
        );
        assert!(rules.last().unwrap().starts_with("goto local-"));
        assert!(!rules.contains(&"jump mark-for-masquerade"));
        let local = chain(&text, rules.last().unwrap().strip_prefix("goto ").unwrap());
        assert_eq!(local.len(), 1);
        assert!(
            text.contains("dnat to 10.42.1.5:8080"),
            "cluster traffic uses every endpoint"
        );
        // Only remote endpoints: external traffic is dropped, ClusterIP traffic still works.
        let text = render(
            &config(),
            &services,
            &[slice("loc", &[("10.42.1.5", "n2", true)])],
        );
        assert_eq!(
            element_verdict(&text, "tcp . 30023").as_deref(),
            Some("drop")
        );
        assert!(element_verdict(&text, "10.43.0.23 . tcp . 80")
            .unwrap()
            .starts_with("goto svc-"));
    }

    #[test]
    fn internal_traffic_policy_local() {
        let spec = json!({"clusterIP": "10.43.0.24", "internalTrafficPolicy": "Local",
            "ports": [{"port": 80, "protocol": "TCP"}]});
        let services = [svc("itp", spec)];
        let text = render(
            &config(),
            &services,
            &[slice(
                "itp",
                &[("10.42.0.5", "n1", true), ("10.42.1.5", "n2", true)],
            )],
        );
        assert!(element_verdict(&text, "10.43.0.24 . tcp . 80")
            .unwrap()
            .starts_with("goto local-"));
        assert!(!text.contains("10.42.1.5"));
        let text = render(
            &config(),
            &services,
            &[slice("itp", &[("10.42.1.5", "n2", true)])],
        );
        assert_eq!(
            element_verdict(&text, "10.43.0.24 . tcp . 80").as_deref(),
            Some("drop")
        );
    }

    #[test]
    fn client_ip_affinity_uses_sets_with_the_timeout() {
        let spec = json!({"clusterIP": "10.43.0.25", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"port": 80, "protocol": "TCP"}]});
        let text = render(
            &config(),
            &[svc("aff", spec)],
            &[slice(
                "aff",
                &[("10.42.0.5", "n1", true), ("10.42.0.6", "n1", true)],
            )],
        );
        assert_eq!(
            text.matches("flags dynamic,timeout\n\t\ttimeout 60s")
                .count(),
            2
        );
        assert_eq!(text.matches("update @aff-").count(), 2);
        let v = element_verdict(&text, "10.43.0.25 . tcp . 80").unwrap();
        let rules = chain(&text, v.strip_prefix("goto ").unwrap());
        assert!(rules[0].starts_with("ip saddr @aff-") && rules[1].starts_with("ip saddr @aff-"));
        assert!(rules[2].starts_with("numgen random mod 2"));
        let sets = affinity_sets(&text);
        assert_eq!(sets.len(), 2);
        let mut entries = BTreeMap::new();
        entries.insert(
            sets[0].to_string(),
            vec![(
                Ipv4Addr::new(10, 42, 3, 2),
                std::time::Duration::from_secs(20),
            )],
        );
        let carried = with_set_entries(&text, &entries);
        assert!(carried.contains(
            "\t\ttimeout 60s\n\t\telements = { 10.42.3.2 timeout 60s expires 20000ms }\n\t}"
        ));
    }

    #[test]
    fn many_endpoints_use_one_numgen_vmap() {
        let services = [svc(
            "big",
            json!({"clusterIP": "10.43.0.27", "ports": [{"port": 80, "protocol": "TCP"}]}),
        )];
        let ips: Vec<String> = (0..20).map(|i| format!("10.42.0.{}", 10 + i)).collect();
        let eps: Vec<(&str, &str, bool)> = ips.iter().map(|ip| (ip.as_str(), "n1", true)).collect();
        let text = render(&config(), &services, &[slice("big", &eps)]);
        let v = element_verdict(&text, "10.43.0.27 . tcp . 80").unwrap();
        let rules = chain(&text, v.strip_prefix("goto ").unwrap());
        assert_eq!(rules.len(), 1);
        assert!(rules[0].starts_with("numgen random mod 20 vmap { 0 : goto ep-"));
        assert_eq!(rules[0].matches(" : goto ep-").count(), 20);
    }
}
