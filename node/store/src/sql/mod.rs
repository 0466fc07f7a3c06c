//! The log-structured store over SQL.
//!
//! * One **writer thread** owns the only write connection. Writes are queued on a channel; the
//!   thread takes everything queued (up to `max_write_batch`), applies it in one transaction and
//!   commits once (group commit: one fsync for the whole batch). Only after the commit does it
//!   publish the events and answer the callers, so an acknowledged write is durable.
//! * **Readers** use a small pool of read-only connections on tokio's blocking pool. In WAL mode
//!   they read a committed snapshot and never wait for the writer.
//! * **Compaction** runs on the writer thread, one short transaction per `compact_batch`
//!   revisions, and queued writes are served between batches. It only writes when it has rows
//!   to delete.

pub mod dialect;
mod queries;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, oneshot};

use self::dialect::Dialect;
use self::queries::Queries;
use crate::log::{self, Applied, LogTxn, Row, WriteOp};
use crate::watch::EventSender;
use crate::{
    Backend, BoxFuture, Error, Event, KeyValue, ListResult, Revision, StoreOptions, Watcher,
};

const COMPACT_META: &str = "compact_revision";

/// State shared by the handle, the readers and the writer thread.
struct Shared {
    path: PathBuf,
    dialect: Arc<dyn Dialect>,
    q: Queries,
    opts: StoreOptions,
    /// Revision of the last commit (published after the commit).
    current: AtomicI64,
    /// Revisions below this may be gone. Raised *before* a compaction batch deletes, so a reader
    /// that re-checks it after its query knows whether its snapshot could have been affected.
    compact: AtomicI64,
    closed: AtomicBool,
    /// Write transactions committed (for tests and debugging).
    commits: AtomicU64,
    /// `None` once closed (drops the channel, which ends every watcher).
    events: Mutex<Option<EventSender>>,
    readers: Mutex<Vec<Connection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn open_reader(&self) -> Result<Connection, Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        setup(&conn, &self.dialect.connection_setup(&self.opts, false))?;
        Ok(conn)
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_compacted(&self, rev: Revision) -> Result<(), Error> {
        let compact = self.compact.load(Ordering::Acquire);
        if rev < compact {
            return Err(Error::Compacted {
                compact_revision: compact,
            });
        }
        Ok(())
    }
}

/// Runs statements that may or may not return rows (PRAGMAs do).
fn setup(conn: &Connection, statements: &[String]) -> Result<(), Error> {
    for sql in statements {
        let mut st = conn.prepare(sql)?;
        let mut rows = st.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(())
}

fn read_row(r: &rusqlite::Row<'_>, off: usize) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(off)?,
        name: r.get(off + 1)?,
        created: r.get::<_, i64>(off + 2)? != 0,
        deleted: r.get::<_, i64>(off + 3)? != 0,
        create_revision: r.get(off + 4)?,
        prev_revision: r.get(off + 5)?,
        value: r.get(off + 6)?,
    })
}

/// Parameters for a prefix range: `[prefix]` or `[prefix, end]`, and which query variant.
fn range_params(prefix: &str) -> (usize, Vec<Value>) {
    match log::prefix_end(prefix) {
        Some(end) => (1, vec![Value::Text(prefix.to_owned()), Value::Text(end)]),
        None => (0, vec![Value::Text(prefix.to_owned())]),
    }
}

fn limit_param(limit: Option<usize>) -> i64 {
    // One extra row tells whether there is more.
    limit
        .and_then(|l| i64::try_from(l).ok())
        .and_then(|l| l.checked_add(1))
        .unwrap_or(i64::MAX)
}

/// A write in flight and where to send its answer.
type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A write's reply channel and its outcome (`None`: it shares the whole batch's failure).
type Answer = (Reply<KeyValue>, Option<Result<KeyValue, Error>>);

enum Request {
    Write {
        op: WriteOp,
        reply: Reply<KeyValue>,
    },
    Compact {
        keep: Revision,
        reply: Reply<Revision>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The SQL backend handle.
pub(crate) struct SqlBackend {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
}

impl SqlBackend {
    pub fn open(
        path: &Path,
        dialect: Arc<dyn Dialect>,
        opts: StoreOptions,
    ) -> Result<SqlBackend, Error> {
        let conn = Connection::open(path)?;
        setup(&conn, &dialect.connection_setup(&opts, true))?;
        let q = Queries::new(dialect.as_ref());
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let schema = setup(&conn, &dialect.schema());
        match schema {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        let max_id: Revision = conn.query_row(&q.max_id, [], |r| r.get(0))?;
        let compact: Revision = conn
            .query_row(&q.get_meta, [COMPACT_META], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        // A compaction may have deleted the newest row (a tombstone); the compact revision then
        // still remembers how far revisions got.
        let current = max_id.max(compact);
        tracing::info!(
            path = %path.display(),
            dialect = dialect.name(),
            revision = current,
            compact_revision = compact,
            "opened store"
        );
        let (events, _) = broadcast::channel(opts.watch_buffer.max(1));
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            dialect,
            q,
            opts,
            current: AtomicI64::new(current),
            compact: AtomicI64::new(compact),
            closed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            events: Mutex::new(Some(events)),
            readers: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            next_periodic: next_periodic(&shared.opts),
            shared: Arc::clone(&shared),
            rx,
            job: None,
        };
        std::thread::Builder::new()
            .name("k3rs-store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(Error::backend)?;
        Ok(SqlBackend {
            shared,
            requests: tx,
        })
    }

    /// Runs `f` on a pooled read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Queries) -> Result<T, Error> + Send + 'static,
    {
        self.shared.check_open()?;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&shared.readers).pop();
            let conn = match pooled {
                Some(c) => c,
                None => shared.open_reader()?,
            };
            let res = f(&conn, &shared.q);
            let mut pool = lock(&shared.readers);
            if pool.len() < shared.opts.max_idle_readers {
                pool.push(conn);
            }
            res
        })
        .await
        .map_err(Error::backend)?
    }

    async fn write(&self, op: WriteOp) -> Result<KeyValue, Error> {
        self.shared.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Write { op, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

impl Backend for SqlBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, Error>> {
        let key = key.to_owned();
        Box::pin(self.read(move |conn, q| {
            let row = conn
                .prepare_cached(&q.latest)?
                .query_row([&key], |r| read_row(r, 0))
                .optional()?;
            Ok(row.filter(|r| !r.deleted).map(Row::into_kv))
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListResult, Error>> {
        Box::pin(async move {
            let current = self.shared.current.load(Ordering::Acquire);
            let rev = match revision {
                None => current,
                Some(r) if r > current => return Err(Error::FutureRevision { current }),
                Some(r) => r,
            };
            self.shared.check_compacted(rev)?;
            let (variant, mut params) = range_params(prefix);
            params.push(Value::Text(start_after.unwrap_or("").to_owned()));
            params.push(Value::Integer(rev));
            params.push(Value::Integer(limit_param(limit)));
            let mut items = self
                .read(move |conn, q| {
                    let mut st = conn.prepare_cached(&q.list[variant])?;
                    let rows =
                        st.query_map(rusqlite::params_from_iter(params), |r| read_row(r, 0))?;
                    let mut items = Vec::new();
                    for row in rows {
                        items.push(row?.into_kv());
                    }
                    Ok(items)
                })
                .await?;
            // Compaction announces before it deletes: re-checking after the read catches a
            // snapshot that may have lost rows this revision needed.
            self.shared.check_compacted(rev)?;
            let more = limit.is_some_and(|l| items.len() > l);
            if let Some(l) = limit {
                items.truncate(l);
            }
            Ok(ListResult {
                items,
                revision: rev,
                more,
            })
        })
    }

    fn count<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<usize, Error>> {
        let (variant, params) = range_params(prefix);
        Box::pin(self.read(move |conn, q| {
            let n: i64 = conn
                .prepare_cached(&q.count[variant])?
                .query_row(rusqlite::params_from_iter(params), |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        }))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.write(WriteOp::Create {
            key: key.to_owned(),
            value,
        }))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.write(WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        }))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue, Error>> {
        Box::pin(self.write(WriteOp::Delete {
            key: key.to_owned(),
            expected,
        }))
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, Error>> {
        Box::pin(async move {
            self.shared.check_open()?;
            Ok(self.shared.current.load(Ordering::Acquire))
        })
    }

    fn compact_revision(&self) -> Revision {
        self.shared.compact.load(Ordering::Acquire)
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<Watcher, Error>> {
        Box::pin(async move {
            self.shared.check_open()?;
            self.shared.check_compacted(after)?;
            // Subscribe first, then read the log: every event is in one or the other (or both;
            // the watcher drops duplicates by revision).
            let rx = lock(&self.shared.events)
                .as_ref()
                .map(|tx| tx.subscribe())
                .ok_or(Error::Closed)?;
            let current = self.shared.current.load(Ordering::Acquire);
            let replay = if after >= current {
                // Nothing committed after `after` before we subscribed; the live stream has it.
                Vec::new()
            } else {
                let (variant, range) = range_params(prefix);
                let mut params = vec![Value::Integer(after)];
                params.extend(range);
                let replay = self
                    .read(move |conn, q| {
                        let mut st = conn.prepare_cached(&q.after[variant])?;
                        let rows = st.query_map(rusqlite::params_from_iter(params), |r| {
                            let row = read_row(r, 0)?;
                            let prev = match r.get::<_, Option<i64>>(7)? {
                                Some(_) => Some(read_row(r, 7)?),
                                None => None,
                            };
                            Ok((row, prev))
                        })?;
                        let mut events: Vec<Event> = Vec::new();
                        for row in rows {
                            let (row, prev) = row?;
                            events.push(row.into_event(prev));
                        }
                        Ok(events)
                    })
                    .await?;
                self.shared.check_compacted(after)?;
                replay
            };
            Ok(Watcher::new(prefix, after, replay, Some(rx)))
        })
    }

    fn compact(&self, keep_revisions: Revision) -> BoxFuture<'_, Result<Revision, Error>> {
        Box::pin(async move {
            self.shared.check_open()?;
            let (reply, rx) = oneshot::channel();
            self.requests
                .send(Request::Compact {
                    keep: keep_revisions,
                    reply,
                })
                .map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            if self.requests.send(Request::Close { reply }).is_ok() {
                let _ = rx.await;
            }
        })
    }
}

fn next_periodic(opts: &StoreOptions) -> Option<Instant> {
    if opts.compact_interval.is_zero() {
        return None;
    }
    Instant::now().checked_add(opts.compact_interval)
}

/// An ongoing compaction, advanced one batch at a time between write batches.
struct CompactJob {
    target: Revision,
    waiters: Vec<Reply<Revision>>,
}

/// The writer thread.
struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    job: Option<CompactJob>,
    next_periodic: Option<Instant>,
}

/// `LogTxn` over the writer's open transaction.
struct SqlTxn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    q: &'a Queries,
}

impl LogTxn for SqlTxn<'_> {
    fn latest(&mut self, name: &str) -> Result<Option<Row>, Error> {
        Ok(self
            .tx
            .prepare_cached(&self.q.latest)?
            .query_row([name], |r| read_row(r, 0))
            .optional()?)
    }

    fn insert(&mut self, row: &Row) -> Result<(), Error> {
        self.tx.prepare_cached(&self.q.insert)?.execute(params![
            row.id,
            row.name,
            i64::from(row.created),
            i64::from(row.deleted),
            row.create_revision,
            row.prev_revision,
            row.value,
        ])?;
        Ok(())
    }
}

impl Writer {
    fn run(mut self) {
        tracing::debug!("store writer started");
        loop {
            let received = if self.job.is_some() {
                // Serve queued writes first, then do one compaction batch.
                self.rx.recv_timeout(Duration::ZERO)
            } else {
                match self.next_periodic {
                    Some(at) => self
                        .rx
                        .recv_timeout(at.saturating_duration_since(Instant::now())),
                    None => self
                        .rx
                        .recv()
                        .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                }
            };
            match received {
                Ok(first) => {
                    if !self.handle(first) {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.job.is_none() {
                        self.next_periodic = next_periodic(&self.shared.opts);
                        let target = self.shared.current.load(Ordering::Acquire)
                            - self.shared.opts.compact_keep;
                        self.start_compaction(target, None);
                    }
                    if self.job.is_some() {
                        self.compact_step();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        *lock(&self.shared.events) = None;
        if let Some(job) = self.job.take() {
            for w in job.waiters {
                let _ = w.send(Err(Error::Closed));
            }
        }
        lock(&self.shared.readers).clear();
        tracing::debug!("store writer stopped");
    }

    /// Handles `first` and everything else already queued. Returns false on close.
    fn handle(&mut self, first: Request) -> bool {
        let mut writes = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Write { op, reply } => writes.push((op, reply)),
                Request::Compact { keep, reply } => {
                    let target = self.shared.current.load(Ordering::Acquire) - keep;
                    self.start_compaction(target, Some(reply));
                }
                Request::Close { reply } => {
                    close = Some(reply);
                    break;
                }
            }
            if writes.len() < self.shared.opts.max_write_batch.max(1) {
                next = self.rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            self.commit(writes);
        }
        match close {
            Some(reply) => {
                self.shutdown();
                let _ = reply.send(());
                false
            }
            None => true,
        }
    }

    /// Group commit: applies every write in one transaction, commits once, then publishes.
    fn commit(&mut self, writes: Vec<(WriteOp, Reply<KeyValue>)>) {
        let shared = Arc::clone(&self.shared);
        let base = shared.current.load(Ordering::Acquire);
        let n = writes.len();
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let e = Error::from(e);
                tracing::error!(error = %e, source = ?e, "cannot begin write transaction");
                for (_, reply) in writes {
                    let _ = reply.send(Err(e.duplicate()));
                }
                return;
            }
        };
        let mut rev = base;
        let mut failure: Option<Error> = None;
        let mut results: Vec<Answer> = Vec::with_capacity(n);
        let mut events = Vec::new();
        for (op, reply) in writes {
            if failure.is_some() {
                results.push((reply, None));
                continue;
            }
            let mut txn = SqlTxn {
                tx: &tx,
                q: &shared.q,
            };
            match log::apply(&mut txn, op, rev + 1) {
                Ok(Applied::Written { kv, event }) => {
                    rev = kv.mod_revision;
                    events.push(event);
                    results.push((reply, Some(Ok(kv))));
                }
                Ok(Applied::Unchanged(kv)) => results.push((reply, Some(Ok(kv)))),
                Err(e @ Error::Backend(_)) => {
                    failure = Some(e);
                    results.push((reply, None));
                }
                Err(e) => results.push((reply, Some(Err(e)))),
            }
        }
        if failure.is_none() && !events.is_empty() {
            match tx.commit() {
                Ok(()) => {
                    shared.commits.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failure = Some(e.into()),
            }
        } else {
            // Nothing to write (or a failure): roll back, which writes nothing.
            drop(tx);
        }
        if let Some(e) = failure {
            tracing::error!(error = %e, source = ?e, writes = n, "write batch failed");
            for (reply, _) in results {
                let _ = reply.send(Err(e.duplicate()));
            }
            return;
        }
        shared.current.store(rev, Ordering::Release);
        tracing::trace!(writes = n, revision = rev, "committed write batch");
        if let Some(tx) = lock(&shared.events).as_ref() {
            for ev in events {
                // No receivers is fine.
                let _ = tx.send(Arc::new(ev));
            }
        }
        for (reply, res) in results {
            if let Some(res) = res {
                let _ = reply.send(res);
            }
        }
    }

    fn start_compaction(&mut self, target: Revision, waiter: Option<Reply<Revision>>) {
        let compact = self.shared.compact.load(Ordering::Acquire);
        if target <= compact && self.job.is_none() {
            if let Some(w) = waiter {
                let _ = w.send(Ok(compact));
            }
            return;
        }
        let job = self.job.get_or_insert(CompactJob {
            target,
            waiters: Vec::new(),
        });
        job.target = job.target.max(target);
        job.waiters.extend(waiter);
    }

    /// One compaction batch: revisions (compact, compact + compact_batch].
    fn compact_step(&mut self) {
        let Some(job) = &self.job else { return };
        let from = self.shared.compact.load(Ordering::Acquire);
        if from >= job.target {
            if let Some(job) = self.job.take() {
                tracing::debug!(compact_revision = from, "compaction done");
                for w in job.waiters {
                    let _ = w.send(Ok(from));
                }
            }
            return;
        }
        let to = from
            .saturating_add(self.shared.opts.compact_batch.max(1))
            .min(job.target);
        // Announce before deleting; readers re-check after reading.
        self.shared.compact.store(to, Ordering::Release);
        match self.delete_range(from, to) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(from, to, rows = n, "compacted"),
            Err(e) => {
                tracing::error!(error = %e, source = ?e, from, to, "compaction failed");
                if let Some(job) = self.job.take() {
                    for w in job.waiters {
                        let _ = w.send(Err(e.duplicate()));
                    }
                }
            }
        }
    }

    /// Deletes what compaction removes for revisions (from, to]. Writes nothing (and does not
    /// even commit) when there is nothing to delete. The persisted compact revision is therefore
    /// only raised together with a deletion; after a restart it may be lower than the in-memory
    /// one was, which is still truthful: no row above it was deleted.
    fn delete_range(&mut self, from: Revision, to: Revision) -> Result<usize, Error> {
        let q = &self.shared.q;
        let tx = self.conn.transaction()?;
        let ids: Vec<i64> = {
            let mut st = tx.prepare_cached(&q.compact_candidates)?;
            let rows = st.query_map(params![from, to, from, to], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if ids.is_empty() {
            return Ok(0);
        }
        {
            let mut del = tx.prepare_cached(&q.delete_row)?;
            for id in &ids {
                del.execute([id])?;
            }
        }
        tx.execute(&q.set_meta, params![COMPACT_META, to])?;
        tx.commit()?;
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn concurrent_writes_are_group_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(
            SqlBackend::open(
                &dir.path().join("db"),
                Arc::new(dialect::SqliteDialect),
                StoreOptions::default(),
            )
            .expect("open"),
        );
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let b = Arc::clone(&backend);
            tasks.push(tokio::spawn(async move {
                b.create(&format!("/r/{i}"), vec![0; 100])
                    .await
                    .map(|kv| kv.mod_revision)
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("create");
        }
        let commits = backend.shared.commits.load(Ordering::Relaxed);
        assert_eq!(backend.shared.current.load(Ordering::Acquire), 1000);
        assert!(
            commits < 1000,
            "expected batching, got {commits} commits for 1000 writes"
        );
        println!("1000 concurrent writes in {commits} commits");
    }
}
