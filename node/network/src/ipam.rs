//! Host-local IPAM, file-backed like the CNI `host-local` plugin: one file per allocated address
//! (named by the address, holding the pod uid) and a `last_reserved_ip.<range>` marker, so
//! allocation goes round-robin and a freed address is not handed out again at once.
//!
//! A file is claimed with `O_CREAT|O_EXCL`, which is atomic between threads and processes, and
//! a mutex serialises the scan and the marker within the process. Addresses are handled as
//! `u128` so an IPv6 range (dual-stack) is one more [`Ipam`] with its own range id.

use crate::{io_err, Error, Result};
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::debug;

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr> {
        if prefix > bits(&addr) {
            return Err(Error::Cidr(format!("{addr}/{prefix}")));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        from_u128(&self.addr, to_u128(&self.addr) & self.mask())
    }

    /// The last address (all host bits set): IPv4's broadcast address.
    pub fn last(&self) -> IpAddr {
        from_u128(&self.addr, to_u128(&self.addr) | !self.mask() & self.all())
    }

    /// The gateway of a pod subnet: the first address after the network address.
    pub fn gateway(&self) -> IpAddr {
        from_u128(&self.addr, to_u128(&self.network()) + 1)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && to_u128(ip) & self.mask() == to_u128(&self.addr) & self.mask()
    }

    /// The `index`-th subnet of length `prefix` inside this one (`10.42.0.0/16`, 24, 3 →
    /// `10.42.3.0/24`), or None past the end.
    pub fn subnet(&self, prefix: u8, index: u128) -> Option<Cidr> {
        if prefix < self.prefix || prefix > bits(&self.addr) {
            return None;
        }
        let count = 1u128.checked_shl(u32::from(prefix - self.prefix))?;
        if index >= count {
            return None;
        }
        let step = 1u128.checked_shl(u32::from(bits(&self.addr) - prefix))?;
        let base = to_u128(&self.network()) + index * step;
        Some(Cidr {
            addr: from_u128(&self.addr, base),
            prefix,
        })
    }

    fn all(&self) -> u128 {
        if self.addr.is_ipv4() {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        }
    }

    fn mask(&self) -> u128 {
        let host = u32::from(bits(&self.addr) - self.prefix);
        if host >= 128 {
            0
        } else {
            (self.all() >> host) << host
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cidr> {
        let bad = || Error::Cidr(s.to_string());
        let (ip, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        Cidr::new(addr, prefix)
    }
}

fn bits(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(*v)),
        IpAddr::V6(v) => u128::from(*v),
    }
}

fn from_u128(like: &IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// One address range of a node (its podCIDR for one IP family).
pub struct Ipam {
    dir: PathBuf,
    range: Cidr,
    /// `0` for the first range, `1` for a second family: names the round-robin marker.
    range_id: u32,
    lock: Mutex<()>,
}

impl Ipam {
    /// Opens (creating) the store in `dir` for `range`.
    pub fn open(dir: impl Into<PathBuf>, range: Cidr, range_id: u32) -> Result<Ipam> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(Ipam {
            dir,
            range,
            range_id,
            lock: Mutex::new(()),
        })
    }

    pub fn range(&self) -> Cidr {
        self.range
    }

    /// The first and last address handed out: the network address, the gateway (first host)
    /// and the broadcast (last) address are never given.
    fn bounds(&self) -> (u128, u128) {
        let first = to_u128(&self.range.network()) + 2;
        let last = to_u128(&self.range.last()) - 1;
        (first, last)
    }

    fn marker(&self) -> PathBuf {
        self.dir.join(format!("last_reserved_ip.{}", self.range_id))
    }

    /// The address held by `owner` in this range, if any.
    pub fn get(&self, owner: &str) -> Option<IpAddr> {
        self.allocations()
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
    }

    /// Every allocation of this range: (address, owner).
    pub fn allocations(&self) -> Vec<(IpAddr, String)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(ip) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !self.range.contains(&ip) {
                continue;
            }
            if let Ok(owner) = fs::read_to_string(e.path()) {
                out.push((ip, owner.trim().to_string()));
            }
        }
        out.sort();
        out
    }

    /// Returns `owner`'s address, allocating the next free one after the last reserved.
    pub fn allocate(&self, owner: &str) -> Result<IpAddr> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = self.get(owner) {
            return Ok(ip);
        }
        let (first, last) = self.bounds();
        if first > last {
            return Err(Error::Exhausted(self.range.to_string()));
        }
        let start = fs::read_to_string(self.marker())
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|ip| self.range.contains(ip))
            .map(|ip| to_u128(&ip))
            .filter(|v| (first..=last).contains(v))
            .map(|v| if v == last { first } else { v + 1 })
            .unwrap_or(first);
        let size = last - first + 1;
        for i in 0..size {
            let v = first + (start - first + i) % size;
            let ip = from_u128(&self.range.addr, v);
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(io_err(format!("writing {}", path.display())))?;
                    write_atomic(&self.marker(), &ip.to_string())?;
                    debug!(%ip, owner, "address allocated");
                    return Ok(ip);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("creating {}", path.display()))(e)),
            }
        }
        Err(Error::Exhausted(self.range.to_string()))
    }

    /// Releases every address `owner` holds in this range; returns them.
    pub fn release(&self, owner: &str) -> Result<Vec<IpAddr>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut freed = Vec::new();
        for (ip, o) in self.allocations() {
            if o == owner {
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => freed.push(ip),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
                }
            }
        }
        Ok(freed)
    }
}

fn write_atomic(path: &Path, content: &str) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unique per writer: two processes (or stores) may write the marker at once.
    let tmp = path.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    fs::write(&tmp, content).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("renaming {}", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_math() {
        let c = cidr("10.42.0.0/16");
        assert_eq!(c.subnet(24, 3), Some(cidr("10.42.3.0/24")));
        assert_eq!(c.subnet(24, 255), Some(cidr("10.42.255.0/24")));
        assert_eq!(c.subnet(24, 256), None);
        let p = cidr("10.42.7.9/24");
        assert_eq!(p.network().to_string(), "10.42.7.0");
        assert_eq!(p.gateway().to_string(), "10.42.7.1");
        assert_eq!(p.last().to_string(), "10.42.7.255");
        assert!(p.contains(&"10.42.7.200".parse().unwrap()));
        assert!(!p.contains(&"10.42.8.1".parse().unwrap()));
        let v6 = cidr("fd00:42::/56");
        assert_eq!(v6.subnet(64, 1), Some(cidr("fd00:42:0:1::/64")));
        assert_eq!(v6.gateway().to_string(), "fd00:42::1");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }

    #[test]
    fn idempotent_round_robin_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.42.0.0/24"), 0).unwrap();
        let a = ipam.allocate("pod-a").unwrap();
        assert_eq!(
            a.to_string(),
            "10.42.0.2",
            "gateway and network are never given"
        );
        assert_eq!(ipam.allocate("pod-a").unwrap(), a);
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(b.to_string(), "10.42.0.3");
        assert_eq!(ipam.release("pod-a").unwrap(), vec![a]);
        // A freed address is not reused at once: round-robin continues after the last one.
        let c = ipam.allocate("pod-c").unwrap();
        assert_eq!(c.to_string(), "10.42.0.4");
        drop(ipam);
        // A new process (restart) sees the same allocations and continues after the marker.
        let ipam = Ipam::open(dir.path(), cidr("10.42.0.0/24"), 0).unwrap();
        assert_eq!(ipam.get("pod-b"), Some(b));
        assert_eq!(ipam.allocate("pod-c").unwrap(), c);
        assert_eq!(ipam.allocate("pod-d").unwrap().to_string(), "10.42.0.5");
        assert_eq!(ipam.release("nobody").unwrap(), Vec::<IpAddr>::new());
    }

    #[test]
    fn exhaustion_and_wraparound() {
        let dir = tempfile::tempdir().unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast → .2 to .6 are usable.
        let ipam = Ipam::open(dir.path(), cidr("10.42.0.0/29"), 0).unwrap();
        let got: Vec<String> = (0..5)
            .map(|i| ipam.allocate(&format!("p{i}")).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.42.0.2",
                "10.42.0.3",
                "10.42.0.4",
                "10.42.0.5",
                "10.42.0.6"
            ]
        );
        match ipam.allocate("p5") {
            Err(Error::Exhausted(r)) => assert_eq!(r, "10.42.0.0/29"),
            other => panic!("expected exhaustion, got {other:?}"),
        }
        ipam.release("p1").unwrap();
        // Wraps around past the broadcast address to the one freed.
        assert_eq!(ipam.allocate("p5").unwrap().to_string(), "10.42.0.3");
    }

    #[test]
    fn no_duplicates_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Arc::new(Ipam::open(dir.path(), cidr("10.42.0.0/24"), 0).unwrap());
        // Two stores on one directory stand for two processes.
        let other = Arc::new(Ipam::open(dir.path(), cidr("10.42.0.0/24"), 0).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = if t % 2 == 0 {
                    ipam.clone()
                } else {
                    other.clone()
                };
                std::thread::spawn(move || {
                    (0..30)
                        .map(|i| ipam.allocate(&format!("t{t}-p{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        let mut exhausted = 0;
        for h in handles {
            for r in h.join().unwrap() {
                match r {
                    Ok(ip) => assert!(seen.insert(ip), "{ip} handed out twice"),
                    Err(Error::Exhausted(_)) => exhausted += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        // 240 requests for 253 usable addresses: all succeed, all distinct.
        assert_eq!(seen.len(), 240);
        assert_eq!(exhausted, 0);
        assert_eq!(ipam.allocations().len(), 240);
    }

    #[test]
    fn ipv6_range() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("fd00:42::/64"), 1).unwrap();
        assert_eq!(ipam.allocate("a").unwrap().to_string(), "fd00:42::2");
        assert!(dir.path().join("last_reserved_ip.1").exists());
    }
}
