//! A cache of forwarded answers, like the `cache 30` line of K3s's Corefile: positive and
//! negative answers live for their smallest TTL (negative: the SOA's), at most 30 s, and are
//! served with their TTLs counted down.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_TTL: Duration = Duration::from_secs(30);

type Key = (Name, RecordType, DNSClass);

struct Entry {
    message: Message,
    stored: Instant,
    expires: Instant,
}

pub struct Cache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
}

fn key(name: &Name, qtype: RecordType, class: DNSClass) -> Key {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    (n, qtype, class)
}

/// How long an answer may be kept; None = not at all (errors, truncated, zero TTL).
fn lifetime(m: &Message) -> Option<Duration> {
    if m.metadata.truncation {
        return None;
    }
    let ttl = match m.metadata.response_code {
        ResponseCode::NoError if !m.answers.is_empty() => m.answers.iter().map(|r| r.ttl).min()?,
        ResponseCode::NoError | ResponseCode::NXDomain => {
            m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?
        }
        _ => return None,
    };
    let ttl = Duration::from_secs(u64::from(ttl)).min(MAX_TTL);
    (!ttl.is_zero()).then_some(ttl)
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// A cached answer with its TTLs lowered by the time it has been kept.
    pub fn get(&self, name: &Name, qtype: RecordType, class: DNSClass) -> Option<Message> {
        let now = Instant::now();
        let mut entries = self.entries.lock().ok()?;
        let k = key(name, qtype, class);
        let e = entries.get(&k)?;
        if e.expires <= now {
            entries.remove(&k);
            return None;
        }
        let age = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        let mut m = e.message.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(m)
    }

    pub fn put(&self, name: &Name, qtype: RecordType, class: DNSClass, message: &Message) {
        let Some(ttl) = lifetime(message) else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let now = Instant::now();
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            key(name, qtype, class),
            Entry {
                message: message.clone(),
                stored: now,
                expires: now + ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Record;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn keeps_answers_for_their_ttl_capped_and_skips_failures() {
        let c = Cache::new(10);
        let mut m = Message::response(1, OpCode::Query);
        m.add_answer(Record::from_rdata(
            n("a.example."),
            300,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        assert_eq!(lifetime(&m), Some(MAX_TTL));
        c.put(&n("A.example."), RecordType::A, DNSClass::IN, &m);
        let got = c.get(&n("a.example"), RecordType::A, DNSClass::IN).unwrap();
        assert_eq!(got.answers[0].ttl, 300);
        assert!(c
            .get(&n("a.example."), RecordType::AAAA, DNSClass::IN)
            .is_none());

        let mut nx = Message::response(2, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_authority(Record::from_rdata(
            n("example."),
            3600,
            RData::SOA(SOA::new(n("ns.example."), n("h.example."), 1, 1, 1, 1, 7)),
        ));
        assert_eq!(lifetime(&nx), Some(Duration::from_secs(7)));

        let mut fail = Message::response(3, OpCode::Query);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(lifetime(&fail), None);
        let mut zero = Message::response(4, OpCode::Query);
        zero.add_answer(Record::from_rdata(
            n("z.example."),
            0,
            RData::A(A::new(192, 0, 2, 2)),
        ));
        assert_eq!(lifetime(&zero), None);
    }
}
