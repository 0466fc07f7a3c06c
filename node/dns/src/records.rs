//! The current zone snapshot, rebuilt from watch-fed caches of Services and EndpointSlices.

use crate::zone::Zone;
use crate::Error;
use k3rs_client::informer::Informer;
use k3rs_client::{Client, Resource};
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;
use tracing::{debug, info_span, warn};

/// A handle on the zone being served; cheap to clone, readers never wait for a rebuild.
#[derive(Clone)]
pub struct Records {
    zone: Arc<RwLock<Arc<Zone>>>,
    domain: String,
    dns_ip: IpAddr,
    ttl: u32,
    rebuilds: Arc<AtomicU64>,
}

impl Records {
    /// A fixed set of objects (tests, benchmarks); `replace` swaps it.
    pub fn new(
        domain: &str,
        dns_ip: IpAddr,
        ttl: u32,
        services: &[Value],
        slices: &[Value],
    ) -> Result<Records, Error> {
        let zone = Zone::build(domain, dns_ip, ttl, services, slices).map_err(Error::Domain)?;
        Ok(Records {
            zone: Arc::new(RwLock::new(Arc::new(zone))),
            domain: domain.to_string(),
            dns_ip,
            ttl,
            rebuilds: Arc::default(),
        })
    }

    pub fn zone(&self) -> Arc<Zone> {
        match self.zone.read() {
            Ok(z) => z.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the zone from these objects.
    pub fn replace(&self, services: &[Value], slices: &[Value]) -> Result<(), Error> {
        let zone = Zone::build(&self.domain, self.dns_ip, self.ttl, services, slices)
            .map_err(Error::Domain)?;
        match self.zone.write() {
            Ok(mut z) => *z = Arc::new(zone),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(zone),
        }
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many times the zone was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Watches Services and EndpointSlices through `client` and rebuilds the zone after every
    /// change (bursts coalesce into one rebuild). Returns once both caches have synced.
    pub async fn watch(
        client: Arc<dyn Client>,
        domain: &str,
        dns_ip: IpAddr,
        ttl: u32,
    ) -> Result<Records, Error> {
        let records = Records::new(domain, dns_ip, ttl, &[], &[])?;
        let services = Informer::new(Resource::core("services"));
        let slices = Informer::new(Resource::new("discovery.k8s.io", "v1", "endpointslices"));
        let changed = Arc::new(Notify::new());
        for inf in [&services, &slices] {
            let changed = changed.clone();
            inf.on_change(Box::new(move |_, _| changed.notify_one()));
            inf.spawn(client.clone());
        }
        services.wait_synced().await;
        slices.wait_synced().await;
        let rebuild = {
            let records = records.clone();
            move || {
                let _span = info_span!("dns_rebuild").entered();
                let svcs = services.list(None);
                let eps = slices.list(None);
                match records.replace(&svcs, &eps) {
                    Ok(()) => debug!(services = svcs.len(), slices = eps.len(), "zone rebuilt"),
                    Err(e) => warn!(error = %e, "rebuilding the zone failed"),
                }
            }
        };
        rebuild();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                rebuild();
            }
        });
        Ok(records)
    }
}
