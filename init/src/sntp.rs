//! A small SNTPv4 client (RFC 4330): one 48-byte request over UDP, the reply checked against it,
//! the clock offset from the four timestamps. TLS needs a sane clock, so the clock is never set
//! before the image's build date whatever a server says.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const PACKET_LEN: usize = 48;
pub const DEFAULT_PORT: u16 = 123;

#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("resolving {0}")]
    Resolve(String, #[source] std::io::Error),
    #[error("UDP to {addr}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reply of {0} bytes (want at least 48)")]
    Short(usize),
    #[error("reply is mode {0}, not server (4)")]
    Mode(u8),
    #[error("reply is NTP version {0}")]
    Version(u8),
    #[error("kiss-o'-death {0:?}: the server asks not to be queried")]
    KissOfDeath(String),
    #[error("server is not synchronized (leap indicator 3 or stratum {0})")]
    Unsynchronized(u8),
    #[error("reply does not answer our request (originate timestamp differs)")]
    NotOurs,
    #[error("server time {server} is before the image's build date {floor}")]
    BeforeBuildDate { server: i64, floor: i64 },
}

/// A 64-bit NTP timestamp: seconds since 1900 and a 32-bit binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpTimestamp {
    pub secs: u32,
    pub frac: u32,
}

impl NtpTimestamp {
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        // Truncation to 32 bits is the era wrap of the format (2036), undone in `to_unix_nanos`.
        let secs = (d.as_secs() + NTP_UNIX_OFFSET) as u32;
        let frac = ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000) as u32;
        NtpTimestamp { secs, frac }
    }

    /// Nanoseconds since the Unix epoch. RFC 4330 §3: with the top bit clear the time is in
    /// era 1 (from 2036-02-07), with it set in era 0 (1968–2036).
    pub fn to_unix_nanos(self) -> i128 {
        let secs = if self.secs & 0x8000_0000 == 0 {
            i128::from(self.secs) + (1i128 << 32)
        } else {
            i128::from(self.secs)
        } - i128::from(NTP_UNIX_OFFSET);
        secs * 1_000_000_000 + ((i128::from(self.frac) * 1_000_000_000) >> 32)
    }

    fn read(b: &[u8]) -> Self {
        NtpTimestamp {
            secs: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            frac: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    fn write(self, b: &mut [u8]) {
        b[..4].copy_from_slice(&self.secs.to_be_bytes());
        b[4..8].copy_from_slice(&self.frac.to_be_bytes());
    }

    fn is_zero(self) -> bool {
        self.secs == 0 && self.frac == 0
    }
}

/// A client request: LI 0, version 4, mode 3 (client), our clock in the transmit timestamp
/// (the server echoes it as the originate timestamp, which is how the reply is matched).
pub fn request(transmit: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 4 << 3 | 3;
    transmit.write(&mut p[40..48]);
    p
}

/// What a checked reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub stratum: u8,
    /// Server clock minus ours, in nanoseconds: ((T2 − T1) + (T3 − T4)) / 2.
    pub offset_nanos: i128,
    /// Round trip minus the server's processing time: (T4 − T1) − (T3 − T2).
    pub delay_nanos: i128,
    /// The server's transmit time (T3), nanoseconds since the Unix epoch.
    pub server_unix_nanos: i128,
}

/// Checks a reply against the request sent at `t1` (our transmit timestamp) and received at
/// `t4`, and computes the offset.
pub fn parse_reply(buf: &[u8], t1: NtpTimestamp, t4: NtpTimestamp) -> Result<Reply, SntpError> {
    if buf.len() < PACKET_LEN {
        return Err(SntpError::Short(buf.len()));
    }
    let leap = buf[0] >> 6;
    let version = (buf[0] >> 3) & 7;
    let mode = buf[0] & 7;
    let stratum = buf[1];
    if mode != 4 {
        return Err(SntpError::Mode(mode));
    }
    if !(3..=4).contains(&version) {
        return Err(SntpError::Version(version));
    }
    if stratum == 0 {
        return Err(SntpError::KissOfDeath(
            String::from_utf8_lossy(&buf[12..16]).into_owned(),
        ));
    }
    if leap == 3 || stratum > 15 {
        return Err(SntpError::Unsynchronized(stratum));
    }
    let originate = NtpTimestamp::read(&buf[24..32]);
    if originate != t1 {
        return Err(SntpError::NotOurs);
    }
    let t2 = NtpTimestamp::read(&buf[32..40]).to_unix_nanos();
    let t3ts = NtpTimestamp::read(&buf[40..48]);
    if t3ts.is_zero() {
        return Err(SntpError::Unsynchronized(stratum));
    }
    let t3 = t3ts.to_unix_nanos();
    let (t1, t4) = (t1.to_unix_nanos(), t4.to_unix_nanos());
    Ok(Reply {
        stratum,
        offset_nanos: ((t2 - t1) + (t3 - t4)) / 2,
        delay_nanos: (t4 - t1) - (t3 - t2),
        server_unix_nanos: t3,
    })
}

/// The time to set given our clock and a reply's offset: never before `floor_unix_secs` (the
/// image's build date). `Err` when the server's time itself is before the floor: a server that
/// far off is not believed.
pub fn corrected_time(
    now_unix_nanos: i128,
    reply: &Reply,
    floor_unix_secs: i64,
) -> Result<i128, SntpError> {
    let floor = i128::from(floor_unix_secs) * 1_000_000_000;
    let corrected = now_unix_nanos + reply.offset_nanos;
    if reply.server_unix_nanos < floor || corrected < floor {
        return Err(SntpError::BeforeBuildDate {
            server: (reply.server_unix_nanos / 1_000_000_000) as i64,
            floor: floor_unix_secs,
        });
    }
    Ok(corrected)
}

/// `host`, `host:port`, `a.b.c.d` or `a.b.c.d:port` → socket addresses (port 123 by default).
pub fn resolve(server: &str) -> Result<Vec<SocketAddr>, SntpError> {
    let with_port = if server.parse::<std::net::IpAddr>().is_ok() || !server.contains(':') {
        format!("{server}:{DEFAULT_PORT}")
    } else {
        server.to_string()
    };
    with_port
        .to_socket_addrs()
        .map(|a| a.collect())
        .map_err(|e| SntpError::Resolve(server.to_string(), e))
}

/// One query to `addr`, waiting at most `timeout`.
pub fn query(addr: SocketAddr, timeout: Duration) -> Result<Reply, SntpError> {
    let err = |source| SntpError::Io {
        addr: addr.to_string(),
        source,
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).map_err(err)?;
    sock.connect(addr).map_err(err)?;
    sock.set_read_timeout(Some(timeout)).map_err(err)?;
    let t1 = NtpTimestamp::from_system(SystemTime::now());
    sock.send(&request(t1)).map_err(err)?;
    let mut buf = [0u8; 128];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let n = sock.recv(&mut buf).map_err(err)?;
        let t4 = NtpTimestamp::from_system(SystemTime::now());
        match parse_reply(&buf[..n], t1, t4) {
            // A late reply to an earlier request: keep waiting for ours.
            Err(SntpError::NotOurs) if std::time::Instant::now() < deadline => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_reply(originate: NtpTimestamp, t2: NtpTimestamp, t3: NtpTimestamp) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 4 << 3 | 4; // LI 0, v4, server
        p[1] = 2; // stratum
        p[2] = 6; // poll
        p[3] = 0xec; // precision
        p[12..16].copy_from_slice(b"GPS\0");
        originate.write(&mut p[24..32]);
        t2.write(&mut p[32..40]);
        t3.write(&mut p[40..48]);
        p
    }

    fn ts(unix_secs: u64, millis: u64) -> NtpTimestamp {
        NtpTimestamp::from_system(
            UNIX_EPOCH + Duration::from_secs(unix_secs) + Duration::from_millis(millis),
        )
    }

    #[test]
    fn request_layout() {
        let t = NtpTimestamp {
            secs: 0xE96A_0000,
            frac: 0x8000_0000,
        };
        let p = request(t);
        assert_eq!(p.len(), 48);
        assert_eq!(p[0], 0x23, "LI 0, VN 4, mode 3");
        assert!(p[1..40].iter().all(|b| *b == 0));
        assert_eq!(&p[40..48], &[0xE9, 0x6A, 0, 0, 0x80, 0, 0, 0]);
    }

    #[test]
    fn timestamps_round_trip_and_eras() {
        // 2026-01-01T00:00:00Z, half a second.
        let t = ts(1_767_225_600, 500);
        assert_eq!(t.secs as u64, 1_767_225_600 + NTP_UNIX_OFFSET);
        assert_eq!(t.frac, 0x8000_0000);
        assert_eq!(t.to_unix_nanos(), 1_767_225_600_500_000_000);
        // 2040 lies in era 1: the 32-bit seconds wrapped, the top bit is clear.
        let t = ts(2_208_988_800, 0);
        assert_eq!(t.secs & 0x8000_0000, 0);
        assert_eq!(t.to_unix_nanos(), 2_208_988_800_000_000_000);
        // The NTP epoch's second 0 of era 1 is 2036-02-07T06:28:16Z.
        assert_eq!(
            NtpTimestamp { secs: 0, frac: 0 }.to_unix_nanos(),
            ((1i128 << 32) - 2_208_988_800) * 1_000_000_000
        );
    }

    #[test]
    fn offset_and_delay() {
        // We send at 100.000 (our clock), the server (10 s ahead) receives at 110.050 and
        // answers at 110.060, we receive at 100.120: delay 110 ms, offset +10 s.
        let t1 = ts(1_800_000_100, 0);
        let reply = server_reply(t1, ts(1_800_000_110, 50), ts(1_800_000_110, 60));
        let r = parse_reply(&reply, t1, ts(1_800_000_100, 120)).unwrap();
        assert_eq!(r.stratum, 2);
        // Fractions are binary: allow a few nanoseconds of rounding.
        assert!((r.delay_nanos - 110_000_000).abs() < 10, "{r:?}");
        assert!((r.offset_nanos - 9_995_000_000).abs() < 10, "{r:?}");
    }

    #[test]
    fn bad_replies_are_refused() {
        let t1 = ts(1_800_000_000, 0);
        let t = ts(1_800_000_000, 10);
        let good = server_reply(t1, t, t);
        assert!(parse_reply(&good, t1, t).is_ok());
        assert!(matches!(
            parse_reply(&good[..47], t1, t),
            Err(SntpError::Short(47))
        ));
        let mut p = good;
        p[0] = 4 << 3 | 5; // broadcast
        assert!(matches!(parse_reply(&p, t1, t), Err(SntpError::Mode(5))));
        let mut p = good;
        p[0] = 2 << 3 | 4;
        assert!(matches!(parse_reply(&p, t1, t), Err(SntpError::Version(2))));
        let mut p = good;
        p[1] = 0;
        p[12..16].copy_from_slice(b"RATE");
        assert!(matches!(parse_reply(&p, t1, t), Err(SntpError::KissOfDeath(k)) if k == "RATE"));
        let mut p = good;
        p[0] |= 3 << 6;
        assert!(matches!(
            parse_reply(&p, t1, t),
            Err(SntpError::Unsynchronized(_))
        ));
        // An answer to some other request.
        assert!(matches!(
            parse_reply(&good, ts(1_800_000_000, 1), t),
            Err(SntpError::NotOurs)
        ));
        let p = server_reply(t1, t, NtpTimestamp { secs: 0, frac: 0 });
        assert!(parse_reply(&p, t1, t).is_err());
    }

    #[test]
    fn never_before_the_build_date() {
        let build = 1_767_225_600i64; // 2026-01-01
        let reply = |server_secs: i64, offset_secs: i64| Reply {
            stratum: 1,
            offset_nanos: i128::from(offset_secs) * 1_000_000_000,
            delay_nanos: 0,
            server_unix_nanos: i128::from(server_secs) * 1_000_000_000,
        };
        let now = i128::from(build + 1000) * 1_000_000_000;
        // A server slightly ahead: believed.
        assert_eq!(
            corrected_time(now, &reply(build + 1005, 5), build).unwrap(),
            now + 5_000_000_000
        );
        // A server saying 1970 (a fresh RTC-less box serving time): refused.
        assert!(matches!(
            corrected_time(now, &reply(10, -(build + 990)), build),
            Err(SntpError::BeforeBuildDate { server: 10, .. })
        ));
        // Behind us but after the build date: allowed (our clock was ahead).
        assert_eq!(
            corrected_time(now, &reply(build + 500, -500), build).unwrap(),
            now - 500_000_000_000
        );
    }

    #[test]
    fn query_against_a_loopback_responder() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let responder = std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            assert_eq!(n, 48);
            assert_eq!(buf[0], 0x23);
            let originate = NtpTimestamp::read(&buf[40..48]);
            // The server is an hour ahead.
            let now = NtpTimestamp::from_system(SystemTime::now() + Duration::from_secs(3600));
            server
                .send_to(&server_reply(originate, now, now), peer)
                .unwrap();
        });
        let r = query(addr, Duration::from_secs(5)).unwrap();
        responder.join().unwrap();
        let off = r.offset_nanos / 1_000_000_000;
        assert!((3599..=3600).contains(&off), "{r:?}");
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            vec!["127.0.0.1:123".parse().unwrap()]
        );
        assert_eq!(
            resolve("10.0.2.2:1123").unwrap(),
            vec!["10.0.2.2:1123".parse().unwrap()]
        );
    }
}
