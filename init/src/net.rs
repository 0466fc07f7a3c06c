//! Networking over rtnetlink (link up, address, default route) and a DHCPv4 client whose
//! packets are built and parsed by `dhcproto`.

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink {op} refused: errno {errno}")]
    Refused { op: &'static str, errno: i32 },
    #[error("netlink {op}: bad reply")]
    BadReply { op: &'static str },
    #[error("interface {0}: no such interface")]
    NoInterface(String),
    #[error("DHCP socket on {iface}")]
    DhcpSocket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP encode")]
    Encode(#[source] dhcproto::error::EncodeError),
    #[error("no DHCP {stage} on {iface} within {secs}s")]
    Timeout {
        iface: String,
        stage: &'static str,
        secs: u64,
    },
    #[error("DHCP server declined the request (NAK)")]
    Nak,
}

/// Interface index from sysfs.
pub fn ifindex(iface: &str) -> Result<u32, NetError> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| NetError::NoInterface(iface.to_string()))
}

fn mac(iface: &str) -> Result<[u8; 6], NetError> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|_| NetError::NoInterface(iface.to_string()))?;
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').take(6).enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    Ok(m)
}

/// The first wired interface (Ethernet, not wireless, not virtual), by name.
pub fn first_wired_interface() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let base = format!("/sys/class/net/{n}");
            std::fs::read_to_string(format!("{base}/type"))
                .map(|t| t.trim() == "1")
                .unwrap_or(false)
                && !std::path::Path::new(&format!("{base}/wireless")).exists()
                && std::path::Path::new(&format!("{base}/device")).exists()
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

/// An rtnetlink connection.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetError::Socket)?;
        socket.bind_auto().map_err(NetError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetError::Socket)?;
        Ok(Netlink { socket, seq: 1 })
    }

    fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetError> {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        self.seq += 1;
        hdr.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(NetError::Socket)?;
        let mut rbuf = vec![0u8; 8192];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rbuf[..], 0)
                .map_err(NetError::Socket)?;
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[..n])
                .map_err(|_| NetError::BadReply { op })?;
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::Error(e) => match e.code {
                    None => Ok(()),
                    Some(c) if -c.get() == libc::EEXIST => Ok(()),
                    Some(c) => Err(NetError::Refused {
                        op,
                        errno: -c.get(),
                    }),
                },
                _ => Err(NetError::BadReply { op }),
            };
        }
    }

    pub fn link_up(&mut self, index: u32) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request("link up", RouteNetlinkMessage::SetLink(m), 0)
    }

    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.into()));
        m.attributes.push(AddressAttribute::Address(addr.into()));
        let bcast =
            Ipv4Addr::from(u32::from(addr) | (u32::MAX.checked_shr(prefix as u32).unwrap_or(0)));
        m.attributes.push(AddressAttribute::Broadcast(bcast));
        self.request(
            "add address",
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// A default route via `gateway`; `from_dhcp` marks who installed it (`proto dhcp` or
    /// `proto static` in `ip route`).
    pub fn add_default_route(
        &mut self,
        index: u32,
        gateway: Ipv4Addr,
        from_dhcp: bool,
    ) -> Result<(), NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = 254; // main
        m.header.protocol = if from_dhcp {
            RouteProtocol::Dhcp
        } else {
            RouteProtocol::Static
        };
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(
            "add route",
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

/// What a DHCP server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    /// Option 42.
    pub ntp: Vec<Ipv4Addr>,
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).count_ones() as u8
}

/// A DISCOVER or REQUEST from this client.
pub fn client_message(
    kind: MessageType,
    xid: u32,
    mac: &[u8; 6],
    request: Option<(Ipv4Addr, Ipv4Addr)>,
    hostname: Option<&str>,
) -> v4::Message {
    let mut msg = v4::Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    msg.set_flags(v4::Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut cid = vec![1u8];
    cid.extend_from_slice(mac);
    opts.insert(DhcpOption::ClientIdentifier(cid));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::NtpServers,
    ]));
    if let Some((addr, server)) = request {
        opts.insert(DhcpOption::RequestedIpAddress(addr));
        opts.insert(DhcpOption::ServerIdentifier(server));
    }
    if let Some(h) = hostname {
        opts.insert(DhcpOption::Hostname(h.to_string()));
    }
    msg
}

/// The lease in an OFFER or ACK.
pub fn lease_of(msg: &v4::Message) -> Lease {
    let o = msg.opts();
    let mask = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match o.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => msg.siaddr(),
    };
    let lease_secs = match o.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let ntp = match o.get(OptionCode::NtpServers) {
        Some(DhcpOption::NtpServers(n)) => n.clone(),
        _ => Vec::new(),
    };
    Lease {
        address: msg.yiaddr(),
        prefix: prefix_of(mask),
        router,
        dns,
        server,
        lease_secs,
        ntp,
    }
}

fn encode(msg: &v4::Message) -> Result<Vec<u8>, NetError> {
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(NetError::Encode)?;
    Ok(buf)
}

/// A DHCP exchange on one interface (UDP socket bound to the device, broadcast).
pub struct DhcpClient {
    iface: String,
    mac: [u8; 6],
    socket: UdpSocket,
    hostname: Option<String>,
}

impl DhcpClient {
    pub fn new(iface: &str, hostname: Option<String>) -> Result<Self, NetError> {
        let err = |source| NetError::DhcpSocket {
            iface: iface.to_string(),
            source,
        };
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).map_err(err)?;
        socket.set_broadcast(true).map_err(err)?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::BindToDevice,
            &std::ffi::OsString::from(iface),
        )
        .map_err(|e| err(e.into()))?;
        Ok(DhcpClient {
            iface: iface.to_string(),
            mac: mac(iface)?,
            socket,
            hostname,
        })
    }

    fn exchange(
        &self,
        msg: &v4::Message,
        want: &[MessageType],
        stage: &'static str,
        to: Ipv4Addr,
        total: Duration,
    ) -> Result<v4::Message, NetError> {
        let bytes = encode(msg)?;
        let start = Instant::now();
        let mut resend = Duration::from_secs(1);
        while start.elapsed() < total {
            let sent = Instant::now();
            let _ = self.socket.send_to(&bytes, SocketAddrV4::new(to, 67));
            while sent.elapsed() < resend {
                let left = resend
                    .saturating_sub(sent.elapsed())
                    .max(Duration::from_millis(10));
                let _ = self.socket.set_read_timeout(Some(left));
                let mut buf = [0u8; 1500];
                let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(reply) = v4::Message::decode(&mut Decoder::new(&buf[..n])) else {
                    continue;
                };
                if reply.xid() != msg.xid() {
                    continue;
                }
                match reply.opts().msg_type() {
                    Some(MessageType::Nak) => return Err(NetError::Nak),
                    Some(t) if want.contains(&t) => return Ok(reply),
                    _ => {}
                }
            }
            resend = (resend * 2).min(Duration::from_secs(4));
        }
        Err(NetError::Timeout {
            iface: self.iface.clone(),
            stage,
            secs: total.as_secs(),
        })
    }

    /// DISCOVER → OFFER → REQUEST → ACK.
    pub fn acquire(&self, total: Duration) -> Result<Lease, NetError> {
        let xid = rand_u32();
        let discover = client_message(
            MessageType::Discover,
            xid,
            &self.mac,
            None,
            self.hostname.as_deref(),
        );
        let offer = self.exchange(
            &discover,
            &[MessageType::Offer],
            "offer",
            Ipv4Addr::BROADCAST,
            total,
        )?;
        let l = lease_of(&offer);
        let request = client_message(
            MessageType::Request,
            xid,
            &self.mac,
            Some((l.address, l.server)),
            self.hostname.as_deref(),
        );
        let ack = self.exchange(
            &request,
            &[MessageType::Ack],
            "ack",
            Ipv4Addr::BROADCAST,
            total,
        )?;
        Ok(lease_of(&ack))
    }

    /// Renews `lease` with its server (REQUEST → ACK).
    pub fn renew(&self, lease: &Lease) -> Result<Lease, NetError> {
        let request = client_message(
            MessageType::Request,
            rand_u32(),
            &self.mac,
            Some((lease.address, lease.server)),
            self.hostname.as_deref(),
        );
        let ack = self.exchange(
            &request,
            &[MessageType::Ack],
            "ack",
            Ipv4Addr::BROADCAST,
            Duration::from_secs(10),
        )?;
        Ok(lease_of(&ack))
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}

/// `/etc/resolv.conf` contents for these servers.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    dns.iter().map(|d| format!("nameserver {d}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_round_trips_and_offer_parses() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let d = client_message(MessageType::Discover, 7, &mac, None, Some("k3rs"));
        let bytes = encode(&d).unwrap();
        let back = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(back.xid(), 7);
        assert_eq!(back.opts().msg_type(), Some(MessageType::Discover));

        let mut offer = v4::Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        offer
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        offer
            .opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        offer
            .opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        offer
            .opts_mut()
            .insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
        offer
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        offer.opts_mut().insert(DhcpOption::AddressLeaseTime(86400));
        offer.opts_mut().insert(DhcpOption::NtpServers(vec![
            Ipv4Addr::new(10, 0, 2, 4),
            Ipv4Addr::new(192, 0, 2, 1),
        ]));
        let bytes = encode(&offer).unwrap();
        let l = lease_of(&v4::Message::decode(&mut Decoder::new(&bytes)).unwrap());
        assert_eq!(
            l,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                server: Ipv4Addr::new(10, 0, 2, 2),
                lease_secs: 86400,
                ntp: vec![Ipv4Addr::new(10, 0, 2, 4), Ipv4Addr::new(192, 0, 2, 1)],
            }
        );
        assert_eq!(resolv_conf(&l.dns), "nameserver 10.0.2.3\n");
    }
}
