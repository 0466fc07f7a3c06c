//! The same suite against the SQLite backend (temporary directory) and the in-memory backend,
//! plus SQLite-only tests for durability, reopening and "writes nothing".

use std::time::Duration;

use tempfile::TempDir;

use crate::{Error, EventKind, Store, StoreOptions};

struct Fixture {
    store: Store,
    dir: Option<TempDir>,
}

fn test_opts() -> StoreOptions {
    StoreOptions {
        // Periodic compaction off unless a test wants it.
        compact_interval: Duration::ZERO,
        ..StoreOptions::default()
    }
}

fn memory() -> Fixture {
    Fixture {
        store: Store::in_memory_with(test_opts()),
        dir: None,
    }
}

fn sqlite() -> Fixture {
    sqlite_with(test_opts())
}

fn sqlite_with(opts: StoreOptions) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("state.db"), opts).expect("open");
    Fixture {
        store,
        dir: Some(dir),
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn memory() {
                    let f = super::memory();
                    super::suite::$name(&f.store).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    let f = super::sqlite();
                    super::suite::$name(&f.store).await;
                    drop(f.dir);
                }
            }
        )*
    };
}

both_backends!(
    crud,
    conflict_on_stale_revision,
    already_exists_and_recreate,
    list_pagination,
    list_at_older_revision,
    watch_replay_then_live,
    watch_from_current_is_live_only,
    compacted_after_compaction,
    noop_update_writes_nothing,
    concurrent_writes_get_distinct_revisions,
    hundred_watchers,
    closed_after_close,
    slow_watcher_ends,
    watch_started_during_writes_has_no_gap_or_duplicate,
);

mod suite {
    use super::*;

    async fn next(w: &mut crate::Watcher) -> crate::Event {
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("event in time")
            .expect("watch still open")
    }

    async fn no_event(w: &mut crate::Watcher) {
        let r = tokio::time::timeout(Duration::from_millis(100), w.next()).await;
        assert!(r.is_err(), "unexpected event: {r:?}");
    }

    pub async fn crud(s: &Store) {
        assert_eq!(s.current_revision().await.unwrap(), 0);
        assert_eq!(s.get("/r/a").await.unwrap(), None);
        let c = s.create("/r/a", b"one".to_vec()).await.unwrap();
        assert_eq!((c.create_revision, c.mod_revision), (1, 1));
        assert_eq!(s.get("/r/a").await.unwrap(), Some(c.clone()));
        let u = s.update("/r/a", b"two".to_vec(), Some(1)).await.unwrap();
        assert_eq!((u.create_revision, u.mod_revision), (1, 2));
        assert_eq!(u.value, b"two");
        let u2 = s.update("/r/a", b"three".to_vec(), None).await.unwrap();
        assert_eq!(u2.mod_revision, 3);
        let d = s.delete("/r/a", None).await.unwrap();
        assert_eq!(d.mod_revision, 4);
        assert_eq!(d.value, b"three");
        assert_eq!(d.create_revision, 1);
        assert_eq!(s.get("/r/a").await.unwrap(), None);
        assert!(matches!(s.delete("/r/a", None).await, Err(Error::NotFound)));
        assert!(matches!(
            s.update("/r/a", b"x".to_vec(), None).await,
            Err(Error::NotFound)
        ));
        assert_eq!(s.current_revision().await.unwrap(), 4);
    }

    pub async fn conflict_on_stale_revision(s: &Store) {
        s.create("/r/a", b"1".to_vec()).await.unwrap();
        s.update("/r/a", b"2".to_vec(), Some(1)).await.unwrap();
        match s.update("/r/a", b"3".to_vec(), Some(1)).await {
            Err(Error::Conflict { current }) => assert_eq!(current, 2),
            other => panic!("expected conflict, got {other:?}"),
        }
        assert!(matches!(
            s.delete("/r/a", Some(1)).await,
            Err(Error::Conflict { current: 2 })
        ));
        // Stale revision with identical bytes is still a conflict.
        assert!(matches!(
            s.update("/r/a", b"2".to_vec(), Some(1)).await,
            Err(Error::Conflict { current: 2 })
        ));
        assert_eq!(s.delete("/r/a", Some(2)).await.unwrap().mod_revision, 3);
        assert_eq!(s.current_revision().await.unwrap(), 3);
    }

    pub async fn already_exists_and_recreate(s: &Store) {
        s.create("/r/a", b"1".to_vec()).await.unwrap();
        assert!(matches!(
            s.create("/r/a", b"2".to_vec()).await,
            Err(Error::AlreadyExists)
        ));
        assert_eq!(s.current_revision().await.unwrap(), 1);
        s.delete("/r/a", None).await.unwrap();
        let again = s.create("/r/a", b"3".to_vec()).await.unwrap();
        assert_eq!((again.create_revision, again.mod_revision), (3, 3));
    }

    pub async fn list_pagination(s: &Store) {
        for k in ["c", "a", "e", "b", "d"] {
            s.create(&format!("/r/x/{k}"), k.as_bytes().to_vec())
                .await
                .unwrap();
        }
        s.create("/r/y/a", b"y".to_vec()).await.unwrap();
        s.create("/r/x", b"not under /r/x/".to_vec()).await.unwrap();
        s.delete("/r/x/d", None).await.unwrap();

        let page = s.list("/r/x/", None, Some(2), None).await.unwrap();
        let keys: Vec<_> = page.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/r/x/a", "/r/x/b"]);
        assert!(page.more);
        assert_eq!(page.revision, 8);

        let page = s
            .list("/r/x/", Some("/r/x/b"), Some(2), Some(page.revision))
            .await
            .unwrap();
        let keys: Vec<_> = page.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/r/x/c", "/r/x/e"]);
        assert!(!page.more);

        let all = s.list("/r/", None, None, None).await.unwrap();
        assert_eq!(all.items.len(), 6);
        assert!(!all.more);
        let exact = s.list("/r/x/", None, Some(4), None).await.unwrap();
        assert_eq!(exact.items.len(), 4);
        assert!(!exact.more);
        let everything = s.list("", None, None, None).await.unwrap();
        assert_eq!(everything.items.len(), 6);

        assert_eq!(s.count("/r/x/").await.unwrap(), 4);
        assert_eq!(s.count("/r/").await.unwrap(), 6);
        assert_eq!(s.count("/nope/").await.unwrap(), 0);
    }

    pub async fn list_at_older_revision(s: &Store) {
        s.create("/r/a", b"a1".to_vec()).await.unwrap(); // 1
        s.create("/r/b", b"b1".to_vec()).await.unwrap(); // 2
        s.update("/r/a", b"a2".to_vec(), None).await.unwrap(); // 3
        s.delete("/r/b", None).await.unwrap(); // 4
        s.create("/r/c", b"c1".to_vec()).await.unwrap(); // 5

        let values = |r: &crate::ListResult| -> Vec<String> {
            r.items
                .iter()
                .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
                .collect()
        };
        let at2 = s.list("/r/", None, None, Some(2)).await.unwrap();
        assert_eq!(at2.revision, 2);
        assert_eq!(values(&at2), ["a1", "b1"]);
        let at3 = s.list("/r/", None, None, Some(3)).await.unwrap();
        assert_eq!(values(&at3), ["a2", "b1"]);
        assert_eq!(at3.items[0].mod_revision, 3);
        let at4 = s.list("/r/", None, None, Some(4)).await.unwrap();
        assert_eq!(values(&at4), ["a2"]);
        let now = s.list("/r/", None, None, None).await.unwrap();
        assert_eq!(values(&now), ["a2", "c1"]);
        assert_eq!(now.revision, 5);
        assert!(matches!(
            s.list("/r/", None, None, Some(6)).await,
            Err(Error::FutureRevision { current: 5 })
        ));
    }

    pub async fn watch_replay_then_live(s: &Store) {
        s.create("/r/a", b"1".to_vec()).await.unwrap(); // 1
        s.create("/other/a", b"x".to_vec()).await.unwrap(); // 2
        s.update("/r/a", b"2".to_vec(), None).await.unwrap(); // 3
        s.delete("/r/a", None).await.unwrap(); // 4

        let mut w = s.watch("/r/", 1).await.unwrap();
        s.create("/r/b", b"live".to_vec()).await.unwrap(); // 5
        s.create("/other/b", b"x".to_vec()).await.unwrap(); // 6
        s.update("/r/b", b"live2".to_vec(), Some(5)).await.unwrap(); // 7

        let e = next(&mut w).await;
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Update, 3));
        assert_eq!(e.kv.value, b"2");
        assert_eq!(e.prev.as_ref().map(|p| p.value.as_slice()), Some(&b"1"[..]));
        let e = next(&mut w).await;
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Delete, 4));
        assert_eq!(e.kv.value, b"2");
        assert_eq!(e.prev.as_ref().map(|p| p.mod_revision), Some(3));
        let e = next(&mut w).await;
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Create, 5));
        assert!(e.prev.is_none());
        let e = next(&mut w).await;
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Update, 7));
        assert_eq!(e.prev.map(|p| p.mod_revision), Some(5));
        no_event(&mut w).await;

        // From 0: the whole history of the prefix.
        let mut w = s.watch("/r/", 0).await.unwrap();
        let revs: Vec<_> = [
            next(&mut w).await,
            next(&mut w).await,
            next(&mut w).await,
            next(&mut w).await,
            next(&mut w).await,
        ]
        .iter()
        .map(|e| e.kv.mod_revision)
        .collect();
        assert_eq!(revs, [1, 3, 4, 5, 7]);
        no_event(&mut w).await;
    }

    pub async fn watch_from_current_is_live_only(s: &Store) {
        s.create("/r/a", b"1".to_vec()).await.unwrap();
        let cur = s.current_revision().await.unwrap();
        let mut w = s.watch("/r/", cur).await.unwrap();
        no_event(&mut w).await;
        s.update("/r/a", b"2".to_vec(), None).await.unwrap();
        let e = next(&mut w).await;
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Update, 2));
    }

    pub async fn compacted_after_compaction(s: &Store) {
        s.create("/r/a", b"1".to_vec()).await.unwrap(); // 1
        s.update("/r/a", b"2".to_vec(), None).await.unwrap(); // 2
        s.create("/r/b", b"b".to_vec()).await.unwrap(); // 3
        s.delete("/r/b", None).await.unwrap(); // 4
        s.update("/r/a", b"3".to_vec(), None).await.unwrap(); // 5
        s.create("/r/c", b"c".to_vec()).await.unwrap(); // 6
        assert_eq!(s.compact_revision(), 0);

        let rev = s.compact(2).await.unwrap();
        assert_eq!(rev, 4);
        assert_eq!(s.compact_revision(), 4);
        assert!(matches!(
            s.list("/r/", None, None, Some(3)).await,
            Err(Error::Compacted {
                compact_revision: 4
            })
        ));
        assert!(matches!(
            s.watch("/r/", 2).await,
            Err(Error::Compacted {
                compact_revision: 4
            })
        ));
        // State as of the compact revision and later is intact.
        let at4 = s.list("/r/", None, None, Some(4)).await.unwrap();
        assert_eq!(at4.items.len(), 1);
        assert_eq!(at4.items[0].value, b"2");
        let now = s.list("/r/", None, None, None).await.unwrap();
        assert_eq!(now.items.len(), 2);
        let mut w = s.watch("/r/", 4).await.unwrap();
        let e = next(&mut w).await;
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Update, 5));
        assert_eq!(e.prev.map(|p| p.value), Some(b"2".to_vec()));
        assert_eq!(next(&mut w).await.kv.mod_revision, 6);

        // Nothing new to compact: same answer.
        assert_eq!(s.compact(2).await.unwrap(), 4);
        // Compacting everything keeps the current state and the revision.
        assert_eq!(s.compact(0).await.unwrap(), 6);
        assert_eq!(s.current_revision().await.unwrap(), 6);
        assert_eq!(s.count("/r/").await.unwrap(), 2);
        assert_eq!(
            s.update("/r/a", b"4".to_vec(), Some(5))
                .await
                .unwrap()
                .mod_revision,
            7
        );
        assert_eq!(
            s.create("/r/b", b"b2".to_vec()).await.unwrap().mod_revision,
            8
        );
    }

    pub async fn noop_update_writes_nothing(s: &Store) {
        s.create("/r/a", b"same".to_vec()).await.unwrap();
        let mut w = s.watch("/r/", 1).await.unwrap();
        let kv = s.update("/r/a", b"same".to_vec(), Some(1)).await.unwrap();
        assert_eq!(kv.mod_revision, 1);
        let kv = s.update("/r/a", b"same".to_vec(), None).await.unwrap();
        assert_eq!(kv.mod_revision, 1);
        assert_eq!(s.current_revision().await.unwrap(), 1);
        no_event(&mut w).await;
        s.update("/r/a", b"different".to_vec(), None).await.unwrap();
        assert_eq!(next(&mut w).await.kv.mod_revision, 2);
    }

    pub async fn concurrent_writes_get_distinct_revisions(s: &Store) {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create(&format!("/r/k{i:03}"), vec![1]).await.unwrap()
            }));
        }
        let mut revs = Vec::new();
        for t in tasks {
            revs.push(t.await.unwrap().mod_revision);
        }
        revs.sort_unstable();
        assert_eq!(revs, (1..=200).collect::<Vec<_>>());
        assert_eq!(s.count("/r/").await.unwrap(), 200);
        assert_eq!(s.current_revision().await.unwrap(), 200);
    }

    pub async fn hundred_watchers(s: &Store) {
        let mut watchers = Vec::new();
        for i in 0..100 {
            // Half on the written prefix, half on another.
            let prefix = if i % 2 == 0 { "/r/" } else { "/q/" };
            watchers.push(s.watch(prefix, 0).await.unwrap());
        }
        let start = std::time::Instant::now();
        for i in 0..50 {
            s.create(&format!("/r/{i}"), vec![0; 64]).await.unwrap();
        }
        s.create("/q/x", vec![1]).await.unwrap();
        let mut tasks = Vec::new();
        for (i, mut w) in watchers.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let n = if i % 2 == 0 { 50 } else { 1 };
                let mut last = 0;
                for _ in 0..n {
                    let e = next(&mut w).await;
                    assert!(e.kv.mod_revision > last);
                    last = e.kv.mod_revision;
                }
                last
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let last = t.await.unwrap();
            assert_eq!(last, if i % 2 == 0 { 50 } else { 51 });
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    pub async fn closed_after_close(s: &Store) {
        s.create("/r/a", b"1".to_vec()).await.unwrap();
        let mut w = s.watch("/r/", 1).await.unwrap();
        s.close().await;
        let ended = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap();
        assert!(ended.is_none());
        assert!(matches!(s.create("/r/b", vec![]).await, Err(Error::Closed)));
        assert!(matches!(s.get("/r/a").await, Err(Error::Closed)));
        assert!(matches!(s.watch("/r/", 1).await, Err(Error::Closed)));
    }

    pub async fn watch_started_during_writes_has_no_gap_or_duplicate(s: &Store) {
        for i in 0..10 {
            s.create(&format!("/r/{i}"), vec![]).await.unwrap();
        }
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 10..300 {
                    s.create(&format!("/r/{i}"), vec![]).await.unwrap();
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let mut watchers = Vec::new();
        for after in [5, 10, 20, 40] {
            let current = s.current_revision().await.unwrap();
            watchers.push((
                after.min(current),
                s.watch("/r/", after.min(current)).await.unwrap(),
            ));
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        for (after, mut w) in watchers {
            for rev in after + 1..=300 {
                assert_eq!(next(&mut w).await.kv.mod_revision, rev);
            }
            no_event(&mut w).await;
        }
    }

    pub async fn slow_watcher_ends(s: &Store) {
        // watch_buffer is 4096 by default: fall further behind than that.
        let mut w = s.watch("/r/", 0).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..5000 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create(&format!("/r/{i}"), vec![]).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut got = 0;
        while let Some(e) = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
        {
            got += 1;
            assert_eq!(e.kv.mod_revision, got);
        }
        assert!(got < 5000, "a lagging watcher ends instead of skipping");
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<crate::Watcher>();
    send_sync::<Error>();
}

// ---- SQLite only -------------------------------------------------------------------------

fn db_path(f: &Fixture) -> std::path::PathBuf {
    f.dir
        .as_ref()
        .expect("sqlite fixture")
        .path()
        .join("state.db")
}

/// `PRAGMA data_version` on a separate connection changes whenever another connection commits.
fn data_version(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap()
}

fn row_count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT COUNT(*) FROM kv_log", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn acknowledged_write_is_in_the_file() {
    let f = sqlite();
    let kv = f.store.create("/r/a", b"durable".to_vec()).await.unwrap();
    // A brand-new connection (as after a crash) sees the committed row.
    let conn = rusqlite::Connection::open(db_path(&f)).unwrap();
    let (id, value): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT id, value FROM kv_log WHERE name = '/r/a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((id, value), (kv.mod_revision, b"durable".to_vec()));
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn reopen_keeps_data_and_revision() {
    let f = sqlite();
    let path = db_path(&f);
    f.store.create("/r/a", b"1".to_vec()).await.unwrap();
    f.store.create("/r/b", b"2".to_vec()).await.unwrap();
    f.store.update("/r/a", b"3".to_vec(), None).await.unwrap();
    f.store.delete("/r/b", None).await.unwrap(); // 4: the newest row is a tombstone
    f.store.compact(0).await.unwrap(); // ...which compaction deletes
    f.store.close().await;

    let store = Store::open_sqlite(&path, test_opts()).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 4);
    assert_eq!(store.compact_revision(), 4);
    let a = store.get("/r/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"3"[..], 3));
    assert_eq!(store.get("/r/b").await.unwrap(), None);
    let c = store.create("/r/c", vec![]).await.unwrap();
    assert_eq!(c.mod_revision, 5);
    drop(store);

    // Dropping without close also releases the file; revisions keep rising.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let store = Store::open_sqlite(&path, test_opts()).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 5);
    assert_eq!(store.count("/r/").await.unwrap(), 2);
}

#[tokio::test]
async fn noop_update_and_idle_compaction_write_nothing() {
    let f = sqlite();
    let s = &f.store;
    s.create("/r/a", b"v".to_vec()).await.unwrap();
    s.update("/r/a", b"w".to_vec(), None).await.unwrap();
    let observer = rusqlite::Connection::open(db_path(&f)).unwrap();
    let v0 = data_version(&observer);

    s.update("/r/a", b"w".to_vec(), None).await.unwrap();
    assert_eq!(data_version(&observer), v0, "no-op update committed");

    // Nothing below current - 10.
    assert_eq!(s.compact(10).await.unwrap(), 0);
    // Advances the compact revision over a range with nothing to delete: still no write.
    s.create("/r/b", b"b".to_vec()).await.unwrap();
    let v1 = data_version(&observer);
    assert_eq!(s.compact(2).await.unwrap(), 1);
    assert_eq!(data_version(&observer), v1, "empty compaction committed");

    // Something to delete: it writes.
    assert_eq!(s.compact(0).await.unwrap(), 3);
    assert_ne!(data_version(&observer), v1);
    assert_eq!(row_count(&observer), 2);
}

#[tokio::test]
async fn compaction_deletes_superseded_rows_and_tombstones_in_batches() {
    let f = sqlite_with(StoreOptions {
        compact_batch: 7,
        ..test_opts()
    });
    let s = &f.store;
    for i in 0..20 {
        s.create(&format!("/r/{i}"), vec![0]).await.unwrap();
        s.update(&format!("/r/{i}"), vec![1], None).await.unwrap();
    }
    for i in 0..10 {
        s.delete(&format!("/r/{i}"), None).await.unwrap();
    }
    // 50 rows; keep the last 5 revisions (deletes of /r/5../r/9 stay with their prev rows).
    assert_eq!(s.compact(5).await.unwrap(), 45);
    let observer = rusqlite::Connection::open(db_path(&f)).unwrap();
    // 10 live keys' latest rows + 5 retained tombstones + their 5 prev rows.
    assert_eq!(row_count(&observer), 20);
    assert_eq!(s.count("/r/").await.unwrap(), 10);
    let at45 = s.list("/r/", None, None, Some(45)).await.unwrap();
    assert_eq!(at45.items.len(), 15);
    let mut w = s.watch("/r/", 45).await.unwrap();
    for rev in 46..=50 {
        let e = w.next().await.unwrap();
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Delete, rev));
        assert_eq!(e.prev.map(|p| p.value), Some(vec![1]));
    }
}

#[tokio::test]
async fn periodic_compaction_runs() {
    let f = sqlite_with(StoreOptions {
        compact_interval: Duration::from_millis(20),
        compact_keep: 2,
        ..test_opts()
    });
    let s = &f.store;
    s.create("/r/a", vec![0]).await.unwrap();
    for i in 1..10u8 {
        s.update("/r/a", vec![i], None).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.compact_revision() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic compaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.get("/r/a").await.unwrap().unwrap().value, vec![9]);
}

#[tokio::test]
async fn memory_periodic_compaction_runs() {
    let s = Store::in_memory_with(StoreOptions {
        compact_interval: Duration::from_millis(20),
        compact_keep: 2,
        ..test_opts()
    });
    s.create("/r/a", vec![0]).await.unwrap();
    for i in 1..10u8 {
        s.update("/r/a", vec![i], None).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.compact_revision() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic compaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
