//! Prometheus counters on `:9153/metrics`, the port the `kube-dns` Service names, under CoreDNS's
//! metric names (fewer labels) so existing dashboards find them.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::debug;

/// Response codes counted by name; the rest go under "other".
const RCODES: [&str; 5] = ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other"];

#[derive(Default)]
pub struct Metrics {
    pub requests_udp: AtomicU64,
    pub requests_tcp: AtomicU64,
    responses: [AtomicU64; 5],
    pub forwards: AtomicU64,
    pub forward_failures: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

impl Metrics {
    pub fn response(&self, rcode: hickory_proto::op::ResponseCode) {
        use hickory_proto::op::ResponseCode as R;
        let i = match rcode {
            R::NoError => 0,
            R::NXDomain => 1,
            R::ServFail => 2,
            R::Refused => 3,
            _ => 4,
        };
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format; `rebuilds` = zone rebuilds so far.
    pub fn render(&self, rebuilds: u64) -> String {
        let mut out = String::new();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP coredns_dns_requests_total Counter of DNS requests made per protocol."
        );
        let _ = writeln!(out, "# TYPE coredns_dns_requests_total counter");
        let _ = writeln!(
            out,
            "coredns_dns_requests_total{{proto=\"udp\"}} {}",
            c(&self.requests_udp)
        );
        let _ = writeln!(
            out,
            "coredns_dns_requests_total{{proto=\"tcp\"}} {}",
            c(&self.requests_tcp)
        );
        let _ = writeln!(
            out,
            "# HELP coredns_dns_responses_total Counter of response status codes."
        );
        let _ = writeln!(out, "# TYPE coredns_dns_responses_total counter");
        for (name, n) in RCODES.iter().zip(&self.responses) {
            let _ = writeln!(
                out,
                "coredns_dns_responses_total{{rcode=\"{name}\"}} {}",
                c(n)
            );
        }
        for (name, help, v) in [
            (
                "coredns_forward_requests_total",
                "Counter of requests sent upstream.",
                &self.forwards,
            ),
            (
                "coredns_forward_failures_total",
                "Counter of requests no upstream answered.",
                &self.forward_failures,
            ),
            (
                "coredns_cache_hits_total",
                "Counter of forwarded answers served from the cache.",
                &self.cache_hits,
            ),
            (
                "coredns_cache_misses_total",
                "Counter of forwarded questions not in the cache.",
                &self.cache_misses,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c(v)
            );
        }
        let _ = writeln!(out, "# HELP k3rs_dns_zone_rebuilds_total Counter of cluster zone rebuilds.\n# TYPE k3rs_dns_zone_rebuilds_total counter\nk3rs_dns_zone_rebuilds_total {rebuilds}");
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, records: crate::Records) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let records = records.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let rebuilds = records.rebuilds();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.render(rebuilds))))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"404 page not found\n")))
                    };
                    resp.map_err(std::io::Error::other)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "metrics connection");
            }
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Bind(addr, e))
}
