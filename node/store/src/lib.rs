//! `k3rs-store`: a kine-style revisioned key/value log, the storage behind the k3rs API server.
//!
//! Every Kubernetes object is stored as bytes under a key such as
//! `/registry/core/configmaps/default/foo`. Each create, update and delete gets the next value of
//! a single global [`Revision`] (starting at 1), which the API server exposes as
//! `resourceVersion`.
//!
//! # Layering
//!
//! The layering follows kine (`Backend` → log-structured store → SQL log → `Dialect` → driver):
//!
//! ```text
//!   Store                 cheap clonable handle used by the API server (this file)
//!     │
//!   Backend (trait)       the whole key/value + watch contract; etcd would plug in here
//!     ├── MemoryBackend   (memory.rs) in-memory log, same semantics, for unit tests
//!     └── SqlBackend      (sql/mod.rs) log-structured store over SQL:
//!           │               - one writer thread owns the write connection (group commit,
//!           │                 interleaved batched compaction)
//!           │               - a small pool of reader connections (WAL: reads never wait on writes)
//!           │               - in-memory watch fan-out (tokio broadcast)
//!           ├── log.rs      write semantics shared by every backend (create/update/delete rules,
//!           │               no-op detection, row → event conversion)
//!           ├── Queries     (sql/queries.rs) the SQL log: every statement, written once in
//!           │               generic SQL with `?` placeholders
//!           ├── Dialect     (sql/dialect.rs) SQL text that differs per database: DDL, connection
//!           │               setup, placeholder syntax. `SqliteDialect` today; PostgreSQL / MySQL later.
//!           └── driver      rusqlite (bundled SQLite)
//! ```
//!
//! # The log table
//!
//! Like kine, one table holds one row per create/update/delete. The row id *is* the global
//! revision. Columns: `name`, `created`, `deleted`, `create_revision`, `prev_revision`, `value`.
//! The current state of a key is its highest row (a row with `deleted = 1` is a tombstone).
//! Reading "as of revision r" takes, per key, the highest row with `id <= r`.
//!
//! # Durability
//!
//! A write is acknowledged only after its transaction commits. The SQLite backend runs in WAL mode
//! with `synchronous=FULL` by default ([`Synchronous::Full`]): the WAL is fsynced on every commit,
//! so an acknowledged write survives not only `kill -9` of the process but also power loss, which is
//! the realistic failure on a small board. Group commit (many queued writes in one transaction)
//! keeps the fsync count low under load. [`Synchronous::Normal`] (survives process crashes, may
//! lose the last commits on power loss) is available as an option.
//!
//! # Compaction
//!
//! Compaction deletes rows superseded by a newer row and tombstones, up to `current - keep`.
//! It runs on the writer thread in small batches (one short transaction per
//! [`StoreOptions::compact_batch`] revisions), with queued writes served between batches, so it
//! never holds up writers for long, and there is only ever one writing connection, so it cannot
//! produce "database is locked". When there is nothing to delete, it writes nothing at all.
//!
//! # Watch
//!
//! Committed events are fanned out in memory with a tokio broadcast channel; each [`Watcher`]
//! filters by prefix. A watcher starting at an older retained revision first replays the log,
//! then continues with live events, with no gap and no duplicate. A watcher that falls more than
//! [`StoreOptions::watch_buffer`] events behind gets `None` from [`Watcher::next`]; the caller is
//! expected to re-list and re-watch (the Kubernetes watch contract).
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

mod log;
mod memory;
mod sql;
mod watch;

#[cfg(test)]
mod tests;

pub use sql::dialect::{Dialect, SqliteDialect};
pub use watch::Watcher;

/// Global revision; the row id of the log and the Kubernetes `resourceVersion`.
pub type Revision = i64;

/// One key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

/// A committed change.
///
/// For `Delete`: `kv.value` is the last value and `kv.mod_revision` is the revision of the deletion.
/// `prev` is the previous state for `Update` and `Delete` (it may be `None` on replay if that
/// row has been compacted away) and always `None` for `Create`.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which the event happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Result of [`Store::list`].
#[derive(Clone, Debug)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// More items exist after the last returned one (continue with `start_after` = last key).
    pub more: bool,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key not found")]
    NotFound,
    #[error("key already exists")]
    AlreadyExists,
    #[error("revision conflict: the current revision is {current}")]
    Conflict { current: Revision },
    #[error("revision has been compacted: the oldest available revision is {compact_revision}")]
    Compacted { compact_revision: Revision },
    #[error("revision is in the future: the current revision is {current}")]
    FutureRevision { current: Revision },
    #[error("storage backend error")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),
    #[error("store is closed")]
    Closed,
}

impl Error {
    pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Backend(Arc::new(e))
    }

    /// A copy of the error; backend errors share their source.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::NotFound => Error::NotFound,
            Error::AlreadyExists => Error::AlreadyExists,
            Error::Conflict { current } => Error::Conflict { current: *current },
            Error::Compacted { compact_revision } => Error::Compacted {
                compact_revision: *compact_revision,
            },
            Error::FutureRevision { current } => Error::FutureRevision { current: *current },
            Error::Backend(e) => Error::Backend(Arc::clone(e)),
            Error::Closed => Error::Closed,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::backend(e)
    }
}

/// SQLite `synchronous` setting (WAL mode is always used).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL at every commit: acknowledged writes survive power loss. The default.
    #[default]
    Full,
    /// No fsync at commit: acknowledged writes survive a process crash (`kill -9`) but the last
    /// commits may be lost on power loss.
    Normal,
}

/// Tuning knobs.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How often the periodic compaction runs.
    pub compact_interval: Duration,
    /// Compaction keeps this many revisions of history behind the current revision.
    pub compact_keep: Revision,
    /// Revisions handled per compaction transaction (keeps each transaction short).
    pub compact_batch: Revision,
    /// Most writes committed in one group-commit transaction.
    pub max_write_batch: usize,
    /// Events buffered per watcher before it is considered too slow (gets `None`).
    pub watch_buffer: usize,
    /// SQLite `synchronous` mode.
    pub synchronous: Synchronous,
    /// SQLite `busy_timeout` for every connection.
    pub busy_timeout: Duration,
    /// Idle reader connections kept open.
    pub max_idle_readers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compact_interval: Duration::from_secs(300),
            compact_keep: 1000,
            compact_batch: 1000,
            max_write_batch: 256,
            watch_buffer: 4096,
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_idle_readers: 4,
        }
    }
}

/// A boxed future, so [`Backend`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The full storage contract. `SqlBackend` (log-structured store over SQL) and `MemoryBackend`
/// implement it; an etcd client could implement it too. See [`Store`] for the semantics of each
/// method.
pub trait Backend: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, Error>>;
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListResult, Error>>;
    fn count<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<usize, Error>>;
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>)
        -> BoxFuture<'a, Result<KeyValue, Error>>;
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>>;
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>>;
    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, Error>>;
    fn compact_revision(&self) -> Revision;
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<Watcher, Error>>;
    fn compact(&self, keep_revisions: Revision) -> BoxFuture<'_, Result<Revision, Error>>;
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Handle to the store. Cheap to clone; all clones share one backend.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) an SQLite database at `path`, in WAL mode, and starts its writer
    /// thread. Revisions continue from the highest revision in the file.
    pub fn open_sqlite(path: &Path, opts: StoreOptions) -> Result<Store, Error> {
        let backend = sql::SqlBackend::open(path, Arc::new(SqliteDialect), opts)?;
        Ok(Store::from_backend(Arc::new(backend)))
    }

    /// An in-memory store with the same semantics (for tests). Periodic compaction runs only if
    /// it is created inside a tokio runtime.
    pub fn in_memory() -> Store {
        Store::in_memory_with(StoreOptions::default())
    }

    /// [`Store::in_memory`] with options (`compact_*` and `watch_buffer` are honoured).
    pub fn in_memory_with(opts: StoreOptions) -> Store {
        Store::from_backend(memory::MemoryBackend::new(opts))
    }

    /// Wraps any [`Backend`].
    pub fn from_backend(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// The current value of `key`, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.backend.get(key).await
    }

    /// Keys with `prefix`, ascending by key, starting strictly after `start_after`, at most `limit`
    /// items; `revision` = Some(r) reads the state as of revision r (Compacted error if r < compact
    /// revision, FutureRevision if r > current). ListResult.revision = the revision the list was
    /// read at.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        revision: Option<Revision>,
    ) -> Result<ListResult, Error> {
        self.backend
            .list(prefix, start_after, limit, revision)
            .await
    }

    /// Number of live keys with `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<usize, Error> {
        self.backend.count(prefix).await
    }

    /// Creates `key`; `AlreadyExists` if it exists.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, Error> {
        self.backend.create(key, value).await
    }

    /// expected = Some(mod_revision) for optimistic concurrency (Conflict when it differs), None =
    /// unconditional. If value is byte-identical to the current value, NOTHING is written and the
    /// current KeyValue is returned.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue, Error> {
        self.backend.update(key, value, expected).await
    }

    /// Deletes `key`; returns the deleted kv (value = last value, mod_revision = delete revision).
    pub async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error> {
        self.backend.delete(key, expected).await
    }

    /// The revision of the last committed write.
    pub async fn current_revision(&self) -> Result<Revision, Error> {
        self.backend.current_revision().await
    }

    /// Revisions below this have been compacted away.
    pub fn compact_revision(&self) -> Revision {
        self.backend.compact_revision()
    }

    /// Events for keys starting with `prefix` with revision > after, in revision order, then live
    /// events forever. Compacted error if after < compact revision. Works for `after` = current
    /// revision (live only) and for older retained revisions (replay from the log, then live, no
    /// gap, no duplicate).
    pub async fn watch(&self, prefix: &str, after: Revision) -> Result<Watcher, Error> {
        self.backend.watch(prefix, after).await
    }

    /// Compacts history up to `current - keep_revisions` and returns the new compact revision.
    /// (Also runs periodically with [`StoreOptions::compact_keep`].)
    pub async fn compact(&self, keep_revisions: Revision) -> Result<Revision, Error> {
        self.backend.compact(keep_revisions.max(0)).await
    }

    /// Stops the store: waits for queued writes to finish, then every later call returns
    /// `Closed` and every watcher gets `None`.
    pub async fn close(&self) {
        self.backend.close().await
    }
}
