//! The log-structured write rules shared by every backend: what a create, update or delete
//! appends to the log, and how log rows become [`KeyValue`]s and [`Event`]s.

use crate::{Error, Event, EventKind, KeyValue, Revision};

/// One row of the log. `id` is the global revision of the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub id: Revision,
    pub name: String,
    pub created: bool,
    pub deleted: bool,
    pub create_revision: Revision,
    /// Id of the row this one supersedes for the same name (0 = none).
    pub prev_revision: Revision,
    pub value: Vec<u8>,
}

impl Row {
    pub fn to_kv(&self) -> KeyValue {
        KeyValue {
            key: self.name.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }

    pub fn into_kv(self) -> KeyValue {
        KeyValue {
            key: self.name,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }

    /// The event this row records; `prev` is the row it superseded, if still known.
    pub fn into_event(self, prev: Option<Row>) -> Event {
        let kind = if self.deleted {
            EventKind::Delete
        } else if self.created {
            EventKind::Create
        } else {
            EventKind::Update
        };
        let prev = match kind {
            EventKind::Create => None,
            _ => prev.filter(|p| !p.deleted).map(Row::into_kv),
        };
        Event {
            kind,
            kv: self.into_kv(),
            prev,
        }
    }
}

/// A queued write.
#[derive(Debug)]
pub(crate) enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// What a write did.
pub(crate) enum Applied {
    /// A row was appended (consuming one revision).
    Written { kv: KeyValue, event: Event },
    /// No-op update: nothing written, the current value is returned.
    Unchanged(KeyValue),
}

/// The two things a write needs from the log inside its transaction.
pub(crate) trait LogTxn {
    /// The highest row for `name` (tombstones included).
    fn latest(&mut self, name: &str) -> Result<Option<Row>, Error>;
    fn insert(&mut self, row: &Row) -> Result<(), Error>;
}

/// Applies one write at revision `rev` (used only if something is written).
pub(crate) fn apply(txn: &mut impl LogTxn, op: WriteOp, rev: Revision) -> Result<Applied, Error> {
    match op {
        WriteOp::Create { key, value } => {
            let latest = txn.latest(&key)?;
            if matches!(&latest, Some(r) if !r.deleted) {
                return Err(Error::AlreadyExists);
            }
            let row = Row {
                id: rev,
                name: key,
                created: true,
                deleted: false,
                create_revision: rev,
                prev_revision: latest.map_or(0, |r| r.id),
                value,
            };
            txn.insert(&row)?;
            let kv = row.to_kv();
            Ok(Applied::Written {
                kv,
                event: row.into_event(None),
            })
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let cur = live(txn.latest(&key)?)?;
            check_expected(&cur, expected)?;
            if cur.value == value {
                return Ok(Applied::Unchanged(cur.into_kv()));
            }
            let row = Row {
                id: rev,
                name: key,
                created: false,
                deleted: false,
                create_revision: cur.create_revision,
                prev_revision: cur.id,
                value,
            };
            txn.insert(&row)?;
            let kv = row.to_kv();
            Ok(Applied::Written {
                kv,
                event: row.into_event(Some(cur)),
            })
        }
        WriteOp::Delete { key, expected } => {
            let cur = live(txn.latest(&key)?)?;
            check_expected(&cur, expected)?;
            let row = Row {
                id: rev,
                name: key,
                created: false,
                deleted: true,
                create_revision: cur.create_revision,
                prev_revision: cur.id,
                value: cur.value.clone(),
            };
            txn.insert(&row)?;
            let kv = row.to_kv();
            Ok(Applied::Written {
                kv,
                event: row.into_event(Some(cur)),
            })
        }
    }
}

fn live(row: Option<Row>) -> Result<Row, Error> {
    match row {
        Some(r) if !r.deleted => Ok(r),
        _ => Err(Error::NotFound),
    }
}

fn check_expected(cur: &Row, expected: Option<Revision>) -> Result<(), Error> {
    match expected {
        Some(e) if e != cur.id => Err(Error::Conflict { current: cur.id }),
        _ => Ok(()),
    }
}

/// The smallest string greater than every string starting with `prefix`, or `None` if there is
/// none (empty prefix, or a prefix of only `char::MAX`). Byte order of UTF-8 equals code point
/// order, so this works with SQLite's BINARY collation.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let mut n = c as u32 + 1;
        if (0xD800..0xE000).contains(&n) {
            n = 0xE000;
        }
        if let Some(next) = char::from_u32(n) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_char() {
        assert_eq!(prefix_end("/a/").as_deref(), Some("/a0"));
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }
}
