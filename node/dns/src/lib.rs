//! Embedded cluster DNS — the job CoreDNS's `kubernetes` and `forward` plugins do in K3s.
//!
//! [`Records`] keeps a snapshot of the cluster zone ([`zone::Zone`]) rebuilt from watched
//! Services and EndpointSlices; [`DnsServer`] serves it over UDP and TCP with hickory-server and
//! relays every other name to the node's upstream nameservers ([`upstream`]). On a node the server
//! listens on the cluster DNS IP, held by a dummy interface ([`iface`]).
#![forbid(unsafe_code)]

mod cache;
mod handler;
pub mod iface;
pub mod kube_dns;
pub mod metrics;
mod records;
pub mod upstream;
pub mod zone;

pub use records::Records;
pub use upstream::Upstreams;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

/// Record TTL, as CoreDNS's kubernetes plugin.
pub const TTL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("reading {path}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cluster domain")]
    Domain(#[source] hickory_proto::ProtoError),
    #[error("no upstream nameserver")]
    NoUpstream,
    #[error("upstream {server}")]
    Upstream {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0} timed out")]
    UpstreamTimeout(SocketAddr),
    #[error("opening a netlink socket")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("{0}")]
    Netlink(&'static str, #[source] rtnetlink::Error),
    #[error("interface {0} vanished after it was created")]
    InterfaceMissing(String),
    #[error("API request")]
    Api(#[source] k3rs_client::ClientError),
    #[error("serving DNS")]
    Serve(#[source] hickory_server::net::NetError),
}

/// What the node passes in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (UDP and TCP, same address; port 0 picks a free port for both).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// The cluster DNS IP, named by the zone's NS record.
    pub dns_ip: IpAddr,
    /// Upstream nameservers for everything outside the cluster zone.
    pub upstreams: Vec<SocketAddr>,
    /// Per-upstream query timeout.
    pub upstream_timeout: Duration,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl Config {
    pub fn new(
        listen: SocketAddr,
        domain: &str,
        dns_ip: IpAddr,
        upstreams: Vec<SocketAddr>,
    ) -> Config {
        Config {
            listen,
            domain: domain.to_string(),
            dns_ip,
            upstreams,
            upstream_timeout: Duration::from_secs(2),
            metrics: None,
        }
    }
}

/// A bound DNS server; dropping it (or [`DnsServer::shutdown`]) stops serving.
pub struct DnsServer {
    addr: SocketAddr,
    server: hickory_server::Server<handler::Handler>,
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen` and starts answering from `records`.
    pub async fn start(cfg: &Config, records: Records) -> Result<DnsServer, Error> {
        let (udp, tcp) = bind_pair(cfg.listen).await?;
        let addr = udp.local_addr().map_err(|e| Error::Bind(cfg.listen, e))?;
        let metrics = Arc::new(metrics::Metrics::default());
        let (metrics_addr, metrics_task) = match cfg.metrics {
            Some(at) => {
                let listener = metrics::bind(at).await?;
                let bound = listener.local_addr().map_err(|e| Error::Bind(at, e))?;
                let task = tokio::spawn(metrics::serve(listener, metrics.clone(), records.clone()));
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        let mut server = hickory_server::Server::new(handler::Handler {
            records,
            upstreams: Upstreams::new(cfg.upstreams.clone(), cfg.upstream_timeout),
            cache: cache::Cache::new(10_000),
            forwards: tokio::sync::Semaphore::new(1000),
            metrics,
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
        info!(%addr, domain = %cfg.domain, upstreams = ?cfg.upstreams, "cluster DNS serving");
        Ok(DnsServer {
            addr,
            server,
            metrics_addr,
            metrics_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Runs until the server stops (it does not on its own).
    pub async fn wait(mut self) -> Result<(), Error> {
        self.server.block_until_done().await.map_err(Error::Serve)
    }

    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(Error::Serve)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
        if let Some(t) = &self.metrics_task {
            t.abort();
        }
    }
}

async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    // With port 0 the UDP port may be taken on TCP; retry a few times.
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| Error::Bind(listen, e))?;
        let at = udp.local_addr().map_err(|e| Error::Bind(listen, e))?;
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 => last = Some(e),
            Err(e) => return Err(Error::Bind(at, e)),
        }
    }
    Err(Error::Bind(
        listen,
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

/// Everything a node runs: the dummy interface with the DNS IP, the `kube-dns` Service, the
/// watch-fed zone and the server on `<dns_ip>:53`. Returns the running server.
pub async fn run_on_node(
    client: Arc<dyn k3rs_client::Client>,
    domain: &str,
    dns_ip: IpAddr,
    upstreams: Vec<SocketAddr>,
) -> Result<DnsServer, Error> {
    iface::ensure_interface(iface::INTERFACE, dns_ip).await?;
    // Serving matters more than the Service object (e.g. a user already took the IP).
    if let Err(e) = kube_dns::ensure_kube_dns_service(client.as_ref(), dns_ip).await {
        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "could not create the kube-dns Service");
    }
    let records = Records::watch(client, domain, dns_ip, TTL).await?;
    let mut cfg = Config::new(SocketAddr::new(dns_ip, 53), domain, dns_ip, upstreams);
    cfg.metrics = Some(SocketAddr::new(dns_ip, 9153));
    DnsServer::start(&cfg, records).await
}
