//! The SQL that differs between databases. Everything else (the statements of the log, in
//! `queries.rs`) is written once in generic SQL with `?` placeholders and rewritten through
//! [`Dialect::placeholder`].

use crate::{StoreOptions, Synchronous};

/// Database-specific SQL text. `SqliteDialect` is the only implementation today; PostgreSQL
/// would return `$n` placeholders, `BYTEA`/`BIGINT` DDL and no pragmas.
pub trait Dialect: Send + Sync + 'static {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Idempotent DDL creating the log table, its indexes and the metadata table.
    fn schema(&self) -> Vec<String>;
    /// Statements run on every new connection (`writer` = the single write connection).
    fn connection_setup(&self, opts: &StoreOptions, writer: bool) -> Vec<String>;
    /// The placeholder for the `n`-th parameter (1-based).
    fn placeholder(&self, n: usize) -> String;
}

/// SQLite (the bundled library through rusqlite).
#[derive(Clone, Copy, Debug, Default)]
pub struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn schema(&self) -> Vec<String> {
        vec![
            // `id` is the revision: INTEGER PRIMARY KEY aliases the rowid, so the log is stored
            // in revision order and id lookups/ranges are a b-tree search.
            "CREATE TABLE IF NOT EXISTS kv_log (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                created INTEGER NOT NULL,
                deleted INTEGER NOT NULL,
                create_revision INTEGER NOT NULL,
                prev_revision INTEGER NOT NULL,
                value BLOB NOT NULL
            )"
            .to_owned(),
            // Latest row of a name, and per-name max(id) for prefix range scans.
            "CREATE INDEX IF NOT EXISTS kv_log_name_id ON kv_log (name, id)".to_owned(),
            "CREATE TABLE IF NOT EXISTS kv_meta (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            )"
            .to_owned(),
        ]
    }

    fn connection_setup(&self, opts: &StoreOptions, writer: bool) -> Vec<String> {
        let busy = format!(
            "PRAGMA busy_timeout = {}",
            opts.busy_timeout.as_millis().min(i32::MAX as u128)
        );
        if !writer {
            return vec![busy, "PRAGMA query_only = 1".to_owned()];
        }
        let sync = match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        vec![
            busy,
            "PRAGMA journal_mode = WAL".to_owned(),
            format!("PRAGMA synchronous = {sync}"),
        ]
    }

    fn placeholder(&self, n: usize) -> String {
        format!("?{n}")
    }
}
