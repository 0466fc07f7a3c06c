//! Upstream nameservers: picked from the node's resolv.conf (never a loopback stub, as K3s does),
//! queried over UDP with a TCP retry when the answer is truncated.

use crate::Error;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, warn};

/// systemd-resolved's list of the real upstream servers (its stub at 127.0.0.53 is skipped).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// `nameserver` lines of a resolv.conf, minus loopback addresses and `exclude` (the cluster DNS
/// IP itself), so the server never forwards to itself.
pub fn parse_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            // Scoped IPv6 addresses (fe80::1%eth0) are not usable from other interfaces.
            let ip: IpAddr = w.next()?.parse().ok()?;
            Some(ip)
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !exclude.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The upstreams for `--resolv-conf` (`explicit`) or the node's /etc/resolv.conf, falling back to
/// systemd-resolved's real list when the file only names loopback stubs.
pub fn node_upstreams(
    explicit: Option<&Path>,
    exclude: &[IpAddr],
) -> Result<Vec<SocketAddr>, Error> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Error::ResolvConf {
            path: p.to_path_buf(),
            source,
        })
    };
    if let Some(p) = explicit {
        return Ok(parse_resolv_conf(&read(p)?, exclude));
    }
    let etc = PathBuf::from("/etc/resolv.conf");
    let found = parse_resolv_conf(&read(&etc).unwrap_or_default(), exclude);
    if !found.is_empty() {
        return Ok(found);
    }
    let resolved = parse_resolv_conf(
        &read(Path::new(SYSTEMD_RESOLV_CONF)).unwrap_or_default(),
        exclude,
    );
    if resolved.is_empty() {
        warn!("no usable nameserver in /etc/resolv.conf or {SYSTEMD_RESOLV_CONF}: names outside the cluster will not resolve");
    }
    Ok(resolved)
}

/// Forwards raw queries to a list of upstream servers, in order until one answers.
#[derive(Debug, Clone)]
pub struct Upstreams {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Upstreams {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Upstreams { servers, timeout }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Sends `query` (a whole DNS message) and returns the raw answer.
    pub async fn query(&self, query: &[u8]) -> Result<Vec<u8>, Error> {
        let mut last = Error::NoUpstream;
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, exchange(*server, query)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => {
                    debug!(%server, error = %e, "upstream failed");
                    last = Error::Upstream {
                        server: *server,
                        source: e,
                    };
                }
                Err(_) => {
                    debug!(%server, "upstream timed out");
                    last = Error::UpstreamTimeout(*server);
                }
            }
        }
        Err(last)
    }
}

fn truncated(answer: &[u8]) -> bool {
    answer.len() > 2 && answer[2] & 0x02 != 0
}

async fn exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    if query.len() < 12 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "short query",
        ));
    }
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A fresh socket per query: a random source port, and only `server` can answer it.
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Ignore anything that is not the answer to this query id.
        if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            break;
        }
    }
    if !truncated(&buf) {
        return Ok(buf);
    }
    let mut tcp = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    tcp.write_all(&framed).await?;
    let len = tcp.read_u16().await? as usize;
    let mut answer = vec![0u8; len];
    tcp.read_exact(&mut answer).await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_skips_loopback_and_self() {
        let text =
            "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.43.0.10\n\
                    nameserver 192.0.2.1\nnameserver ::1\nnameserver 2001:db8::1\noptions edns0\n";
        let got = parse_resolv_conf(text, &["10.43.0.10".parse().unwrap()]);
        assert_eq!(
            got,
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn explicit_resolv_conf_file() {
        let dir = std::env::temp_dir().join(format!("k3rs-dns-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("resolv.conf");
        std::fs::write(&p, "nameserver 127.0.0.1\nnameserver 198.51.100.7\n").unwrap();
        let got = node_upstreams(Some(&p), &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, vec!["198.51.100.7:53".parse::<SocketAddr>().unwrap()]);
        assert!(matches!(
            node_upstreams(Some(Path::new("/nonexistent/resolv.conf")), &[]),
            Err(Error::ResolvConf { .. })
        ));
    }
}
