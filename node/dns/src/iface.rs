//! The dummy interface that holds the cluster DNS IP on the node (as NodeLocal DNSCache does):
//! pods reach it through their default route to the node, with no NAT in between.

use crate::Error;
use futures_util::TryStreamExt;
use rtnetlink::LinkDummy;
use std::net::IpAddr;
use tracing::{info, warn};

/// Default interface name.
pub const INTERFACE: &str = "k3rs-dns";

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Option<u32> {
    let mut links = handle.link().get().match_name(name).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index)
}

/// Creates `name` (type dummy) if missing, puts `ip` on it (/32 or /128) and sets it up; on a
/// kernel without the dummy driver the address goes on `lo` instead. Idempotent: a restarted
/// node finds the interface as it left it.
pub async fn ensure_interface(name: &str, ip: IpAddr) -> Result<(), Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
    let conn = tokio::spawn(conn);
    let result = async {
        let (index, on) = match link_index(&handle, name).await {
            Some(i) => (i, name),
            None => match handle.link().add(LinkDummy::new(name).build()).execute().await {
                Ok(()) => (
                    link_index(&handle, name)
                        .await
                        .ok_or(Error::InterfaceMissing(name.to_string()))?,
                    name,
                ),
                // Kernels built without the dummy driver (EOPNOTSUPP): any local interface
                // works for local delivery, and lo is always there.
                Err(e) => {
                    warn!(interface = name, error = %e, "cannot create a dummy interface; putting the DNS address on lo");
                    let lo = link_index(&handle, "lo")
                        .await
                        .ok_or(Error::Netlink("creating the dummy interface", e))?;
                    (lo, "lo")
                }
            },
        };
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        handle
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::Netlink("adding the DNS address", e))?;
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::Netlink("setting the interface up", e))?;
        info!(interface = on, %ip, "cluster DNS address ready");
        Ok(())
    }
    .await;
    conn.abort();
    result
}

/// Removes the interface, and `ip` from `lo` where a kernel without the dummy driver made
/// [`ensure_interface`] put it (`k3rs killall`, tests; a node keeps both across restarts).
pub async fn remove_interface(name: &str, ip: IpAddr) -> Result<(), Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
    let conn = tokio::spawn(conn);
    let result = async {
        if let Some(index) = link_index(&handle, name).await {
            handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(|e| Error::Netlink("deleting the interface", e))?;
        }
        let Some(lo) = link_index(&handle, "lo").await else {
            return Ok(());
        };
        let mut addrs = handle
            .address()
            .get()
            .set_link_index_filter(lo)
            .set_address_filter(ip)
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(|e| Error::Netlink("listing the addresses of lo", e))?
        {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| Error::Netlink("removing the DNS address from lo", e))?;
        }
        Ok(())
    }
    .await;
    conn.abort();
    result
}
