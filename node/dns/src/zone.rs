//! The cluster zone as records: a snapshot built from Services and EndpointSlices (JSON objects as
//! the API serves them), answering lookups the way CoreDNS's kubernetes plugin does.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the zone says about a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// An authoritative answer: `answers` empty with `NoError` is NODATA; the SOA goes in the
    /// authority section when there are no answers.
    Answer {
        code: ResponseCode,
        answers: Vec<Record>,
        additionals: Vec<Record>,
        /// A CNAME (ExternalName) whose target lies outside the zone: resolve it upstream.
        chase: Option<Name>,
    },
    /// Not ours (or a reverse name we know nothing about): forward upstream.
    Forward,
}

#[derive(Debug, Default)]
struct Entry {
    ips: Vec<IpAddr>,
    /// (port, target) for SRV.
    srv: Vec<(u16, Name)>,
    cname: Option<Name>,
}

/// One immutable snapshot of the cluster zone.
#[derive(Debug)]
pub struct Zone {
    domain: Name,
    ttl: u32,
    soa: Record,
    ns: Record,
    ns_glue: Vec<Record>,
    names: HashMap<Name, Entry>,
    /// Names that exist only because something lives below them (empty non-terminals): NODATA.
    nonterminals: HashSet<Name>,
    ptr: HashMap<IpAddr, Vec<Name>>,
    pod_zone: Name,
}

fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn lower(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

struct SvcPort {
    name: String,
    proto: String,
    port: u16,
}

fn ports_of(list: &Value) -> Vec<SvcPort> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str().filter(|n| !n.is_empty())?;
            Some(SvcPort {
                name: name.to_ascii_lowercase(),
                proto: p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase(),
                port: u16::try_from(p["port"].as_u64()?).ok()?,
            })
        })
        .collect()
}

impl Zone {
    /// Builds the zone for `domain` (e.g. `cluster.local`) served at `dns_ip`.
    pub fn build(
        domain: &str,
        dns_ip: IpAddr,
        ttl: u32,
        services: &[Value],
        slices: &[Value],
    ) -> Result<Zone, hickory_proto::ProtoError> {
        let domain = lower(&Name::from_ascii(domain)?);
        let ns_name = Name::from_ascii("ns.dns")?.append_domain(&domain)?;
        let soa = Record::from_rdata(
            domain.clone(),
            ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                Name::from_ascii("hostmaster")?.append_domain(&domain)?,
                // CoreDNS uses the zone's last change time; a constant keeps the snapshot pure.
                1,
                7200,
                1800,
                86400,
                ttl,
            )),
        );
        let ns = Record::from_rdata(domain.clone(), ttl, RData::NS(NS(ns_name.clone())));
        let ns_glue = vec![Record::from_rdata(ns_name.clone(), ttl, ip_rdata(dns_ip))];
        let svc_zone = Name::from_ascii("svc")?.append_domain(&domain)?;
        let pod_zone = Name::from_ascii("pod")?.append_domain(&domain)?;
        let mut z = Zone {
            domain: domain.clone(),
            ttl,
            soa,
            ns,
            ns_glue,
            names: HashMap::new(),
            nonterminals: HashSet::new(),
            ptr: HashMap::new(),
            pod_zone: pod_zone.clone(),
        };
        z.entry(ns_name).ips.push(dns_ip);
        z.nonterminals.insert(svc_zone.clone());
        z.nonterminals.insert(pod_zone);

        // EndpointSlices by (namespace, service).
        let mut by_svc: BTreeMap<(&str, &str), Vec<&Value>> = BTreeMap::new();
        for s in slices {
            let ns = s["metadata"]["namespace"].as_str().unwrap_or("");
            if let Some(svc) = s["metadata"]["labels"]["kubernetes.io/service-name"].as_str() {
                by_svc.entry((ns, svc)).or_default().push(s);
            }
        }

        for svc in services {
            let (Some(name), Some(ns)) = (
                svc["metadata"]["name"].as_str(),
                svc["metadata"]["namespace"].as_str(),
            ) else {
                continue;
            };
            let Ok(svc_name) = Name::from_ascii(format!("{name}.{ns}"))
                .and_then(|n| n.append_domain(&svc_zone))
                .map(|n| lower(&n))
            else {
                continue;
            };
            let spec = &svc["spec"];
            let ports = ports_of(&spec["ports"]);
            if spec["type"].as_str() == Some("ExternalName") {
                if let Some(target) = spec["externalName"]
                    .as_str()
                    .and_then(|t| Name::from_ascii(t.trim_end_matches('.')).ok())
                {
                    let mut target = lower(&target);
                    target.set_fqdn(true);
                    z.entry(svc_name).cname = Some(target);
                }
                continue;
            }
            let mut ips: Vec<IpAddr> = spec["clusterIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.as_str()?.parse().ok())
                .collect();
            if ips.is_empty() {
                ips.extend(
                    spec["clusterIP"]
                        .as_str()
                        .and_then(|ip| ip.parse::<IpAddr>().ok()),
                );
            }
            let headless = spec["clusterIP"].as_str() == Some("None");
            if !headless {
                for ip in &ips {
                    z.ptr.entry(*ip).or_default().push(svc_name.clone());
                }
                z.entry(svc_name.clone()).ips.extend(ips);
                for p in &ports {
                    z.add_srv(&svc_name, p, svc_name.clone());
                }
                continue;
            }
            // Headless: one record per ready endpoint, named by its hostname or dashed IP.
            z.entry(svc_name.clone());
            let mut seen = HashSet::new();
            for slice in by_svc.get(&(ns, name)).into_iter().flatten() {
                let slice_ports = ports_of(&slice["ports"]);
                for ep in slice["endpoints"].as_array().into_iter().flatten() {
                    if ep["conditions"]["ready"].as_bool() == Some(false) {
                        continue;
                    }
                    for ip in ep["addresses"].as_array().into_iter().flatten() {
                        let Some(ip) = ip.as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                            continue;
                        };
                        if !seen.insert(ip) {
                            continue;
                        }
                        let host = ep["hostname"]
                            .as_str()
                            .filter(|h| !h.is_empty())
                            .map(str::to_ascii_lowercase)
                            .unwrap_or_else(|| dashed(ip));
                        let Ok(ep_name) = Name::from_ascii(&host)
                            .and_then(|h| h.append_domain(&svc_name))
                            .map(|n| lower(&n))
                        else {
                            continue;
                        };
                        z.entry(svc_name.clone()).ips.push(ip);
                        z.entry(ep_name.clone()).ips.push(ip);
                        z.ptr.entry(ip).or_default().push(ep_name.clone());
                        for p in &slice_ports {
                            z.add_srv(&svc_name, p, ep_name.clone());
                        }
                    }
                }
            }
        }
        let mut nonterminals = HashSet::new();
        for name in z.names.keys() {
            let mut n = name.base_name();
            while n.num_labels() > domain.num_labels() {
                nonterminals.insert(n.clone());
                n = n.base_name();
            }
        }
        z.nonterminals.extend(nonterminals);
        for names in z.ptr.values_mut() {
            names.sort();
            names.dedup();
        }
        Ok(z)
    }

    fn entry(&mut self, name: Name) -> &mut Entry {
        self.names.entry(name).or_default()
    }

    fn add_srv(&mut self, svc_name: &Name, p: &SvcPort, target: Name) {
        let Ok(name) = Name::from_ascii(format!("_{}._{}", p.name, p.proto))
            .and_then(|n| n.append_domain(svc_name))
            .map(|n| lower(&n))
        else {
            return;
        };
        self.entry(name).srv.push((p.port, target.clone()));
        // CoreDNS also answers SRV at the service name itself: every port.
        self.entry(svc_name.clone()).srv.push((p.port, target));
    }

    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The SOA record, for the authority section of NXDOMAIN/NODATA answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// The number of names with records (services, endpoints, SRV names).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn answer(code: ResponseCode, answers: Vec<Record>, additionals: Vec<Record>) -> Lookup {
        Lookup::Answer {
            code,
            answers,
            additionals,
            chase: None,
        }
    }

    fn addresses(&self, name: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
        ips.iter()
            .filter(|ip| match qtype {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                _ => true,
            })
            .map(|ip| Record::from_rdata(name.clone(), self.ttl, ip_rdata(*ip)))
            .collect()
    }

    /// Looks a name up (any case, with or without the trailing dot).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let name = lower(qname);
        if qtype == RecordType::PTR {
            if let Some(ip) = reverse_ip(&name) {
                return match self.ptr.get(&ip) {
                    Some(targets) => Self::answer(
                        ResponseCode::NoError,
                        targets
                            .iter()
                            .map(|t| {
                                Record::from_rdata(
                                    name.clone(),
                                    self.ttl,
                                    RData::PTR(PTR(t.clone())),
                                )
                            })
                            .collect(),
                        Vec::new(),
                    ),
                    None => Lookup::Forward,
                };
            }
        }
        if !self.domain.zone_of(&name) {
            return Lookup::Forward;
        }
        if name == self.domain {
            let answers = match qtype {
                RecordType::SOA => vec![self.soa.clone()],
                RecordType::NS => vec![self.ns.clone()],
                _ => Vec::new(),
            };
            let additionals = if qtype == RecordType::NS {
                self.ns_glue.clone()
            } else {
                Vec::new()
            };
            return Self::answer(ResponseCode::NoError, answers, additionals);
        }
        if let Some(e) = self.names.get(&name) {
            if let Some(target) = &e.cname {
                let cname =
                    Record::from_rdata(name.clone(), self.ttl, RData::CNAME(CNAME(target.clone())));
                if qtype == RecordType::CNAME {
                    return Self::answer(ResponseCode::NoError, vec![cname], Vec::new());
                }
                // Follow one in-zone hop here; an outside target is resolved upstream by the caller.
                if self.domain.zone_of(target) {
                    let mut answers = vec![cname];
                    if let Lookup::Answer { answers: more, .. } = self.lookup(target, qtype) {
                        answers.extend(more);
                    }
                    return Self::answer(ResponseCode::NoError, answers, Vec::new());
                }
                return Lookup::Answer {
                    code: ResponseCode::NoError,
                    answers: vec![cname],
                    additionals: Vec::new(),
                    chase: Some(target.clone()),
                };
            }
            let answers = match qtype {
                RecordType::A | RecordType::AAAA | RecordType::ANY => {
                    self.addresses(&name, &e.ips, qtype)
                }
                RecordType::SRV => {
                    let weight = u16::try_from(100 / e.srv.len().max(1)).unwrap_or(100);
                    e.srv
                        .iter()
                        .map(|(port, target)| {
                            Record::from_rdata(
                                name.clone(),
                                self.ttl,
                                RData::SRV(SRV::new(0, weight, *port, target.clone())),
                            )
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            let mut additionals = Vec::new();
            if qtype == RecordType::SRV {
                let mut seen = HashSet::new();
                for (_, target) in &e.srv {
                    if seen.insert(target.clone()) {
                        if let Some(t) = self.names.get(target) {
                            additionals.extend(self.addresses(target, &t.ips, RecordType::ANY));
                        }
                    }
                }
            }
            return Self::answer(ResponseCode::NoError, answers, additionals);
        }
        // <dashed-ip>.<namespace>.pod.<domain> ("pods insecure": any namespace, no pod check).
        if name.num_labels() == self.pod_zone.num_labels() + 2 && self.pod_zone.zone_of(&name) {
            let label = name
                .iter()
                .next()
                .map(|l| String::from_utf8_lossy(l).into_owned());
            if let Some(ip) = label.as_deref().and_then(undashed) {
                return Self::answer(
                    ResponseCode::NoError,
                    self.addresses(&name, &[ip], qtype),
                    Vec::new(),
                );
            }
        }
        if self.nonterminals.contains(&name)
            || (name.num_labels() == self.pod_zone.num_labels() + 1 && self.pod_zone.zone_of(&name))
        {
            return Self::answer(ResponseCode::NoError, Vec::new(), Vec::new());
        }
        Self::answer(ResponseCode::NXDomain, Vec::new(), Vec::new())
    }
}

/// The address of a full-length reverse name (`4.3.2.1.in-addr.arpa.`, 32 nibbles in `ip6.arpa.`).
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn zone() -> Zone {
        let services = vec![
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"clusterIP": "10.43.1.2", "clusterIPs": ["10.43.1.2", "fd00::12"],
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}}),
            json!({"metadata": {"name": "db", "namespace": "data"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"name": "ext", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
            json!({"metadata": {"name": "alias", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local."}}),
        ];
        let slices = vec![json!({
        "metadata": {"name": "db-abc", "namespace": "data", "labels": {"kubernetes.io/service-name": "db"}},
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}
        ]})];
        Zone::build(
            "cluster.local",
            "10.43.0.10".parse().unwrap(),
            5,
            &services,
            &slices,
        )
        .unwrap()
    }

    fn answers(l: Lookup) -> (ResponseCode, Vec<String>) {
        match l {
            Lookup::Answer { code, answers, .. } => (
                code,
                answers
                    .iter()
                    .map(|r| format!("{} {} {}", r.name, r.ttl, r.data))
                    .collect(),
            ),
            Lookup::Forward => panic!("forwarded"),
        }
    }

    #[test]
    fn cluster_ip_service() {
        let z = zone();
        let (code, a) = answers(z.lookup(&n("WEB.default.svc.cluster.local."), RecordType::A));
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(a, vec!["web.default.svc.cluster.local. 5 10.43.1.2"]);
        let (_, aaaa) = answers(z.lookup(&n("web.default.svc.cluster.local"), RecordType::AAAA));
        assert_eq!(aaaa, vec!["web.default.svc.cluster.local. 5 fd00::12"]);
        let (_, srv) = answers(z.lookup(
            &n("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        ));
        assert_eq!(srv, vec!["_http._tcp.web.default.svc.cluster.local. 5 0 100 80 web.default.svc.cluster.local."]);
    }

    #[test]
    fn headless_service_and_endpoint_names() {
        let z = zone();
        let (_, a) = answers(z.lookup(&n("db.data.svc.cluster.local."), RecordType::A));
        assert_eq!(
            a,
            vec![
                "db.data.svc.cluster.local. 5 10.42.0.5",
                "db.data.svc.cluster.local. 5 10.42.0.6"
            ]
        );
        let (_, a) = answers(z.lookup(&n("db-0.db.data.svc.cluster.local."), RecordType::A));
        assert_eq!(a, vec!["db-0.db.data.svc.cluster.local. 5 10.42.0.5"]);
        let (_, a) = answers(z.lookup(&n("10-42-0-6.db.data.svc.cluster.local."), RecordType::A));
        assert_eq!(a, vec!["10-42-0-6.db.data.svc.cluster.local. 5 10.42.0.6"]);
        let Lookup::Answer {
            answers,
            additionals,
            ..
        } = z.lookup(&n("_pg._tcp.db.data.svc.cluster.local."), RecordType::SRV)
        else {
            panic!()
        };
        assert_eq!(answers.len(), 2);
        assert_eq!(additionals.len(), 2);
        // The not-ready endpoint has no name.
        let (code, _) = answers_of(&z, "10-42-0-7.db.data.svc.cluster.local.", RecordType::A);
        assert_eq!(code, ResponseCode::NXDomain);
    }

    fn answers_of(z: &Zone, name: &str, t: RecordType) -> (ResponseCode, Vec<String>) {
        answers(z.lookup(&n(name), t))
    }

    #[test]
    fn external_name_pods_ptr_and_misses() {
        let z = zone();
        let Lookup::Answer { answers, chase, .. } =
            z.lookup(&n("ext.default.svc.cluster.local."), RecordType::A)
        else {
            panic!()
        };
        assert_eq!(answers[0].data, RData::CNAME(CNAME(n("example.org."))));
        assert_eq!(chase, Some(n("example.org.")));
        // An in-zone target is followed here.
        let (_, a) = answers_of(&z, "alias.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1], "web.default.svc.cluster.local. 5 10.43.1.2");

        let (_, a) = answers_of(&z, "10-42-0-9.default.pod.cluster.local.", RecordType::A);
        assert_eq!(a, vec!["10-42-0-9.default.pod.cluster.local. 5 10.42.0.9"]);
        let (code, _) = answers_of(&z, "nope.default.pod.cluster.local.", RecordType::A);
        assert_eq!(code, ResponseCode::NXDomain);

        let (_, p) = answers_of(&z, "2.1.43.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            p,
            vec!["2.1.43.10.in-addr.arpa. 5 web.default.svc.cluster.local."]
        );
        let (_, p) = answers_of(&z, "5.0.42.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            p,
            vec!["5.0.42.10.in-addr.arpa. 5 db-0.db.data.svc.cluster.local."]
        );
        assert_eq!(
            z.lookup(&n("9.9.9.9.in-addr.arpa."), RecordType::PTR),
            Lookup::Forward
        );
        assert_eq!(z.lookup(&n("example.com."), RecordType::A), Lookup::Forward);

        assert_eq!(
            answers_of(&z, "missing.default.svc.cluster.local.", RecordType::A).0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            answers_of(
                &z,
                "web.default.svc.cluster.local.default.svc.cluster.local.",
                RecordType::A
            )
            .0,
            ResponseCode::NXDomain
        );
        // Empty non-terminals and types a name lacks are NODATA.
        assert_eq!(
            answers_of(&z, "default.svc.cluster.local.", RecordType::A),
            (ResponseCode::NoError, vec![])
        );
        assert_eq!(
            answers_of(&z, "web.default.svc.cluster.local.", RecordType::TXT),
            (ResponseCode::NoError, vec![])
        );
        assert_eq!(answers_of(&z, "cluster.local.", RecordType::SOA).1.len(), 1);
        assert_eq!(
            answers_of(&z, "ns.dns.cluster.local.", RecordType::A).1,
            vec!["ns.dns.cluster.local. 5 10.43.0.10"]
        );
    }
}
