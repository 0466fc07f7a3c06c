//! In-memory backend: the same log (rows keyed by revision) kept in a `BTreeMap`, with the same
//! write rules ([`crate::log::apply`]), compaction rule and watch semantics as the SQL backend.
//! Meant for unit tests of the crates above the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::broadcast;

use crate::log::{self, Applied, LogTxn, Row, WriteOp};
use crate::watch::EventSender;
use crate::{Backend, BoxFuture, Error, KeyValue, ListResult, Revision, StoreOptions, Watcher};

struct MemState {
    rows: BTreeMap<Revision, Row>,
    /// name → id of its highest row.
    latest: HashMap<String, Revision>,
    current: Revision,
    compact: Revision,
    /// `None` once closed.
    events: Option<EventSender>,
}

impl LogTxn for MemState {
    fn latest(&mut self, name: &str) -> Result<Option<Row>, Error> {
        Ok(self
            .latest
            .get(name)
            .and_then(|id| self.rows.get(id))
            .cloned())
    }

    fn insert(&mut self, row: &Row) -> Result<(), Error> {
        self.latest.insert(row.name.clone(), row.id);
        self.rows.insert(row.id, row.clone());
        Ok(())
    }
}

impl MemState {
    fn check_open(&self) -> Result<(), Error> {
        if self.events.is_none() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn write(&mut self, op: WriteOp) -> Result<KeyValue, Error> {
        self.check_open()?;
        match log::apply(self, op, self.current + 1)? {
            Applied::Unchanged(kv) => Ok(kv),
            Applied::Written { kv, event } => {
                self.current = kv.mod_revision;
                if let Some(tx) = &self.events {
                    // No receivers is fine.
                    let _ = tx.send(Arc::new(event));
                }
                Ok(kv)
            }
        }
    }

    /// For each key with `prefix`, its highest row with id <= `rev`.
    fn state_at<'a>(&'a self, prefix: &str, rev: Revision) -> BTreeMap<&'a str, &'a Row> {
        let mut state = BTreeMap::new();
        for row in self.rows.range(..=rev).map(|(_, r)| r) {
            if row.name.starts_with(prefix) {
                state.insert(row.name.as_str(), row);
            }
        }
        state
    }

    fn compact(&mut self, target: Revision) -> Revision {
        if target <= self.compact {
            return self.compact;
        }
        let mut doomed = Vec::new();
        for row in self.rows.range(self.compact + 1..=target).map(|(_, r)| r) {
            if row.prev_revision != 0 {
                doomed.push(row.prev_revision);
            }
            if row.deleted {
                doomed.push(row.id);
            }
        }
        for id in doomed {
            if let Some(row) = self.rows.remove(&id) {
                if self.latest.get(&row.name) == Some(&id) {
                    self.latest.remove(&row.name);
                }
            }
        }
        self.compact = target;
        self.compact
    }
}

pub(crate) struct MemoryBackend {
    state: Mutex<MemState>,
}

impl MemoryBackend {
    pub fn new(opts: StoreOptions) -> Arc<MemoryBackend> {
        let (tx, _) = broadcast::channel(opts.watch_buffer.max(1));
        let backend = Arc::new(MemoryBackend {
            state: Mutex::new(MemState {
                rows: BTreeMap::new(),
                latest: HashMap::new(),
                current: 0,
                compact: 0,
                events: Some(tx),
            }),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&backend);
            handle.spawn(periodic_compaction(weak, opts));
        }
        backend
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, op: WriteOp) -> Result<KeyValue, Error> {
        self.lock().write(op)
    }
}

async fn periodic_compaction(weak: Weak<MemoryBackend>, opts: StoreOptions) {
    if opts.compact_interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(opts.compact_interval).await;
        let Some(backend) = weak.upgrade() else {
            return;
        };
        let mut st = backend.lock();
        if st.events.is_none() {
            return;
        }
        let target = st.current - opts.compact_keep;
        st.compact(target);
    }
}

impl Backend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, Error>> {
        Box::pin(async move {
            let mut st = self.lock();
            st.check_open()?;
            Ok(st.latest(key)?.filter(|r| !r.deleted).map(Row::into_kv))
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListResult, Error>> {
        Box::pin(async move {
            let st = self.lock();
            st.check_open()?;
            let rev = match revision {
                None => st.current,
                Some(r) if r > st.current => {
                    return Err(Error::FutureRevision {
                        current: st.current,
                    })
                }
                Some(r) if r < st.compact => {
                    return Err(Error::Compacted {
                        compact_revision: st.compact,
                    })
                }
                Some(r) => r,
            };
            let limit = limit.unwrap_or(usize::MAX);
            let mut items = Vec::new();
            let mut more = false;
            for (name, row) in st.state_at(prefix, rev) {
                if row.deleted || start_after.is_some_and(|s| name <= s) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(row.to_kv());
            }
            Ok(ListResult {
                items,
                revision: rev,
                more,
            })
        })
    }

    fn count<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<usize, Error>> {
        Box::pin(async move {
            let st = self.lock();
            st.check_open()?;
            Ok(st
                .latest
                .iter()
                .filter(|(name, id)| {
                    name.starts_with(prefix) && st.rows.get(id).is_some_and(|r| !r.deleted)
                })
                .count())
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(async move {
            self.write(WriteOp::Create {
                key: key.to_owned(),
                value,
            })
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(async move {
            self.write(WriteOp::Update {
                key: key.to_owned(),
                value,
                expected,
            })
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(async move {
            self.write(WriteOp::Delete {
                key: key.to_owned(),
                expected,
            })
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, Error>> {
        Box::pin(async move {
            let st = self.lock();
            st.check_open()?;
            Ok(st.current)
        })
    }

    fn compact_revision(&self) -> Revision {
        self.lock().compact
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<Watcher, Error>> {
        Box::pin(async move {
            let st = self.lock();
            let Some(tx) = &st.events else {
                return Err(Error::Closed);
            };
            if after < st.compact {
                return Err(Error::Compacted {
                    compact_revision: st.compact,
                });
            }
            // Under the lock, so the replay and the live stream meet exactly.
            let rx = tx.subscribe();
            let replay = st
                .rows
                .range(after.saturating_add(1)..)
                .map(|(_, r)| r)
                .filter(|r| r.name.starts_with(prefix))
                .map(|r| {
                    let prev = st.rows.get(&r.prev_revision).cloned();
                    r.clone().into_event(prev)
                })
                .collect();
            Ok(Watcher::new(prefix, after, replay, Some(rx)))
        })
    }

    fn compact(&self, keep_revisions: Revision) -> BoxFuture<'_, Result<Revision, Error>> {
        Box::pin(async move {
            let mut st = self.lock();
            st.check_open()?;
            let target = st.current - keep_revisions;
            Ok(st.compact(target))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.lock().events = None;
        })
    }
}
