//! Links, addresses and routes over rtnetlink. Every operation runs on a dedicated OS thread
//! with its own single-threaded runtime; for a pod's namespace the thread first `setns`es into
//! it and only then opens the netlink socket (a socket stays in the namespace it was created
//! in). The thread ends afterwards, so no pooled thread is ever left in a pod's namespace.

use crate::{io_err, Error, Result};
use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |source| Error::Netlink { context, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Runs `f` with a netlink handle inside `netns` (a bind-mounted namespace file) or, for None,
/// the caller's network namespace.
pub(crate) fn run<T, F, Fut>(netns: Option<PathBuf>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    std::thread::Builder::new()
        .name("k3rs-netlink".into())
        .spawn(move || {
            if let Some(path) = &netns {
                let ns = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                    Error::Netns {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io_err("building the netlink runtime"))?;
            rt.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io_err("opening a netlink socket"))?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .map_err(io_err("spawning the netlink thread"))?
        .join()
        .map_err(|_| Error::Thread)?
}

fn name_of(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn controller_of(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// The index of link `name`, None when there is none.
pub(crate) async fn index(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

/// Names of the links whose controller (bridge) is `controller`.
pub(crate) async fn ports_of(h: &Handle, controller: u32) -> Result<Vec<String>> {
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(m) = links.try_next().await.map_err(nl("listing links"))? {
        if controller_of(&m) == Some(controller) {
            if let Some(n) = name_of(&m) {
                out.push(n.to_string());
            }
        }
    }
    Ok(out)
}

async fn add_address(h: &Handle, idx: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    match h.address().add(idx, ip, prefix).execute().await {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        r => r.map_err(nl(format!("adding {ip}/{prefix}"))),
    }
}

async fn set_up(h: &Handle, idx: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl("setting a link up"))
}

/// Creates (or keeps) bridge `name` with `gateway/prefix`, up, with `mtu`; returns its index.
pub(crate) async fn ensure_bridge(
    h: &Handle,
    name: &str,
    gateway: IpAddr,
    prefix: u8,
    mtu: u32,
) -> Result<u32> {
    let idx = match index(h, name).await? {
        Some(i) => i,
        None => {
            match h
                .link()
                .add(LinkBridge::new(name).mtu(mtu).build())
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                r => r.map_err(nl(format!("creating bridge {name}")))?,
            }
            index(h, name)
                .await?
                .ok_or_else(|| Error::Missing(name.into()))?
        }
    };
    add_address(h, idx, gateway, prefix).await?;
    set_up(h, idx).await?;
    Ok(idx)
}

/// Creates veth `host` attached to bridge `bridge` and up, with its peer created directly in
/// the namespace `peer_ns` under the name `eth0`.
pub(crate) async fn create_veth(
    h: &Handle,
    host: &str,
    peer_ns: &File,
    bridge: u32,
    mtu: u32,
) -> Result<()> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0")
        .mtu(mtu)
        .setns_by_fd(peer_ns.as_raw_fd())
        .build();
    // Enslaved to the bridge and up in the same request that creates it (IFLA_MASTER and
    // IFF_UP on RTM_NEWLINK): one netlink round trip under the kernel's RTNL lock, not three.
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host)
        .mtu(mtu)
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl(format!("creating veth {host} on the bridge")))
}

/// Deletes link `name`; Ok(false) when it did not exist.
pub(crate) async fn delete(h: &Handle, name: &str) -> Result<bool> {
    let Some(idx) = index(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(idx).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(nl(format!("deleting {name}"))(e)),
    }
}

/// Inside a pod's namespace: `eth0` gets `ip/prefix`, goes up, and the default route points at
/// `gateway`.
pub(crate) async fn configure_pod(
    h: &Handle,
    ip: IpAddr,
    prefix: u8,
    gateway: IpAddr,
) -> Result<()> {
    let idx = index(h, "eth0")
        .await?
        .ok_or_else(|| Error::Missing("eth0".into()))?;
    add_address(h, idx, ip, prefix).await?;
    set_up(h, idx).await?;
    let route = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(idx)
            .gateway(gw)
            .build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .output_interface(idx)
            .gateway(gw)
            .build(),
    };
    match h.route().add(route).execute().await {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        r => r.map_err(nl(format!("adding the default route via {gateway}"))),
    }
}

/// The addresses on `eth0` inside the current namespace (empty when there is no eth0).
pub(crate) async fn pod_addresses(h: &Handle) -> Result<Vec<IpAddr>> {
    use netlink_packet_route::address::AddressAttribute;
    let Some(idx) = index(h, "eth0").await? else {
        return Ok(Vec::new());
    };
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    let mut out = Vec::new();
    while let Some(m) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}
