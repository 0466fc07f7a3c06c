//! Services and EndpointSlices as the data plane sees them: one [`ServicePort`] per port of a
//! Service that gets rules, with its endpoints resolved from the Service's EndpointSlices, and
//! the endpoint selection of upstream's `CategorizeEndpoints` (topology.go).

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, as upstream).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// An IPv4 network, `10.42.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IPv4 CIDR")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name nft uses (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One address of an EndpointSlice with the port resolved for one Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

/// One port of a Service that gets rules.
#[derive(Clone, Debug)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// `spec.ports[].name` ("" for an unnamed single port).
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ip: Ipv4Addr,
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// Every endpoint of the slices, ready or not, ordered by (ip, port).
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `namespace/name/protocol/portname`, kube-proxy's service port name.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port_name
        )
    }

    /// Reachable from outside the cluster network (NodePort, externalIPs, LoadBalancer IPs).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }

    fn uses_local(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    fn uses_cluster(&self) -> bool {
        !self.internal_policy_local || (self.externally_accessible() && !self.external_policy_local)
    }

    /// Upstream's endpoint categorisation: (cluster endpoints, node-local endpoints, whether any
    /// endpoint is usable at all). Ready endpoints are preferred; when there are none, serving
    /// endpoints that are terminating are used, so connections drain during a rolling update.
    pub fn categorize(&self, node: &str) -> Categorized<'_> {
        let pick = |local: bool| -> Vec<&Endpoint> {
            let here = |e: &&Endpoint| {
                !local || (!node.is_empty() && e.node_name.as_deref() == Some(node))
            };
            let ready: Vec<&Endpoint> = self
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .filter(here)
                .collect();
            if !ready.is_empty() {
                return ready;
            }
            self.endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .filter(here)
                .collect()
        };
        let cluster = if self.uses_cluster() {
            pick(false)
        } else {
            Vec::new()
        };
        let local = if self.uses_local() {
            pick(true)
        } else {
            Vec::new()
        };
        // Usable endpoints anywhere (not only those this traffic may use): upstream's
        // hasAnyEndpoints, which tells reject (none at all) from drop (none local).
        let any = self
            .endpoints
            .iter()
            .any(|e| e.ready || (e.serving && e.terminating));
        Categorized {
            cluster,
            local,
            any,
        }
    }
}

pub struct Categorized<'a> {
    pub cluster: Vec<&'a Endpoint>,
    pub local: Vec<&'a Endpoint>,
    pub any: bool,
}

fn ipv4(v: &Value) -> Option<Ipv4Addr> {
    v.as_str()?.parse().ok()
}

fn port(v: &Value) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// The service ports that get rules, ordered by key: ExternalName and headless Services and
/// Services without an IPv4 cluster IP get none.
pub fn service_ports(services: &[Value], slices: &[Value]) -> Vec<ServicePort> {
    let mut by_service: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
    for s in slices {
        if s["addressType"].as_str() != Some("IPv4") {
            continue;
        }
        let (Some(ns), Some(svc)) = (
            s["metadata"]["namespace"].as_str(),
            s["metadata"]["labels"][SERVICE_NAME_LABEL].as_str(),
        ) else {
            continue;
        };
        by_service.entry((ns, svc)).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let spec = &svc["spec"];
        let ty = spec["type"].as_str().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let Some(cluster_ip) = ipv4(&spec["clusterIP"]) else {
            continue; // headless ("None") or not yet allocated
        };
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = svc["metadata"]["name"].as_str().unwrap_or("");
        let mut external_ips: Vec<Ipv4Addr> = spec["externalIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(ipv4)
            .collect();
        if ty == "LoadBalancer" {
            external_ips.extend(
                svc["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| ipv4(&i["ip"])),
            );
        }
        external_ips.sort();
        external_ips.dedup();
        let affinity_timeout = (spec["sessionAffinity"].as_str() == Some("ClientIP")).then(|| {
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for sp in spec["ports"].as_array().into_iter().flatten() {
            let (Some(protocol), Some(svc_port)) =
                (Protocol::parse(sp["protocol"].as_str()), port(&sp["port"]))
            else {
                continue;
            };
            let port_name = sp["name"].as_str().unwrap_or("").to_string();
            let node_port = if matches!(ty, "NodePort" | "LoadBalancer") {
                port(&sp["nodePort"])
            } else {
                None
            };
            let mut endpoints: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
            for slice in slices {
                let Some(target) = slice["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| {
                        p["name"].as_str().unwrap_or("") == port_name
                            && Protocol::parse(p["protocol"].as_str()) == Some(protocol)
                    })
                    .and_then(|p| port(&p["port"]))
                else {
                    continue;
                };
                for e in slice["endpoints"].as_array().into_iter().flatten() {
                    let Some(ip) = e["addresses"].get(0).and_then(ipv4) else {
                        continue;
                    };
                    let c = &e["conditions"];
                    let ready = c["ready"].as_bool().unwrap_or(true);
                    endpoints.entry((ip, target)).or_insert(Endpoint {
                        ip,
                        port: target,
                        ready,
                        serving: c["serving"].as_bool().unwrap_or(ready),
                        terminating: c["terminating"].as_bool().unwrap_or(false),
                        node_name: e["nodeName"].as_str().map(str::to_string),
                    });
                }
            }
            out.push(ServicePort {
                namespace: ns.to_string(),
                name: name.to_string(),
                port_name,
                protocol,
                port: svc_port,
                cluster_ip,
                node_port,
                external_ips: external_ips.clone(),
                affinity_timeout,
                external_policy_local: spec["externalTrafficPolicy"].as_str() == Some("Local"),
                internal_policy_local: spec["internalTrafficPolicy"].as_str() == Some("Local"),
                endpoints: endpoints.into_values().collect(),
            });
        }
    }
    out.sort_by_key(|a| a.key());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ep(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
        json!({"addresses": [ip], "nodeName": node,
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": "web"}, "spec": spec})
    }

    fn slice(eps: Vec<Value>) -> Value {
        json!({"metadata": {"namespace": "default", "name": "web-abc",
                "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080},
                      {"name": "dns", "protocol": "UDP", "port": 5353}],
            "endpoints": eps})
    }

    #[test]
    fn cidr_parses_and_masks() {
        let c: Cidr = "10.42.7.1/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert!("10.42.0.0".parse::<Cidr>().is_err());
        assert!("10.42.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn ports_resolve_by_name_and_protocol() {
        let s = svc(
            json!({"clusterIP": "10.43.0.20", "type": "NodePort", "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
            {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}]}),
        );
        let sl = slice(vec![ep("10.42.0.5", "n1", true, true, false)]);
        let ports = service_ports(&[s], &[sl]);
        assert_eq!(ports.len(), 2);
        let dns = &ports[1];
        assert_eq!(dns.key(), "default/web/udp/dns");
        assert_eq!((dns.port, dns.node_port), (53, Some(30053)));
        assert_eq!(dns.endpoints[0].port, 5353);
        let http = &ports[0];
        assert_eq!(http.endpoints[0].port, 8080);
        assert_eq!(http.endpoints[0].ip, Ipv4Addr::new(10, 42, 0, 5));
    }

    #[test]
    fn headless_externalname_and_unallocated_get_nothing() {
        let services = [
            svc(json!({"clusterIP": "None", "ports": [{"port": 80}]})),
            svc(json!({"type": "ExternalName", "externalName": "example.com"})),
            svc(json!({"ports": [{"port": 80}]})),
        ];
        assert!(service_ports(&services, &[]).is_empty());
    }

    #[test]
    fn terminating_serving_endpoints_are_the_fallback() {
        let s = svc(json!({"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}));
        let sl = slice(vec![
            ep("10.42.0.5", "n1", false, true, true),
            ep("10.42.0.6", "n1", false, false, true),
            ep("10.42.0.7", "n1", false, false, false),
        ]);
        let ports = service_ports(std::slice::from_ref(&s), &[sl]);
        let c = ports[0].categorize("n1");
        let ips: Vec<_> = c.cluster.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["10.42.0.5"]);
        // One ready endpoint: terminating ones are not used.
        let sl = slice(vec![
            ep("10.42.0.5", "n1", false, true, true),
            ep("10.42.0.8", "n2", true, true, false),
        ]);
        let ports = service_ports(&[s], &[sl]);
        let c = ports[0].categorize("n1");
        let ips: Vec<_> = c.cluster.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["10.42.0.8"]);
        assert!(c.local.is_empty() && c.any);
    }

    #[test]
    fn traffic_policies_pick_local_endpoints() {
        let s = svc(json!({"clusterIP": "10.43.0.20", "type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        let sl = slice(vec![
            ep("10.42.0.5", "n1", true, true, false),
            ep("10.42.1.5", "n2", true, true, false),
        ]);
        let ports = service_ports(&[s], &[sl]);
        let c = ports[0].categorize("n1");
        assert!(c.cluster.is_empty());
        assert_eq!(c.local.len(), 1);
        assert_eq!(c.local[0].ip, Ipv4Addr::new(10, 42, 0, 5));
        // No endpoint on this node: nothing to use, but the Service has endpoints (drop, not reject).
        let c = ports[0].categorize("n3");
        assert!(c.local.is_empty() && c.any);
    }
}
