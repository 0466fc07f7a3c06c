//! The SQL log: every statement the log-structured store runs, in generic SQL. `?` marks a
//! parameter and is rewritten to the dialect's placeholder syntax once, at open.

use super::dialect::Dialect;

const COLUMNS: &str = "id, name, created, deleted, create_revision, prev_revision, value";

/// Prefix range condition on `name`: with an upper bound (`name >= ? AND name < ?`) or without
/// (empty prefix). Index 0 = unbounded, 1 = bounded.
fn range(col: &str, bounded: bool) -> String {
    if bounded {
        format!("{col} >= ? AND {col} < ?")
    } else {
        format!("{col} >= ?")
    }
}

pub(crate) struct Queries {
    /// Highest row of one name. Params: name.
    pub latest: String,
    /// Params: the seven columns.
    pub insert: String,
    /// Live keys as of a revision. Params: range, start_after, revision, limit.
    pub list: [String; 2],
    /// Live keys now. Params: range.
    pub count: [String; 2],
    /// Rows after a revision with their previous row. Params: revision, range.
    pub after: [String; 2],
    /// Ids compaction deletes for the revision range (from, to]: rows superseded by a row in
    /// the range, and tombstones in the range. Params: from, to, from, to.
    pub compact_candidates: String,
    /// Params: id.
    pub delete_row: String,
    pub max_id: String,
    /// Params: name.
    pub get_meta: String,
    /// Params: name, value.
    pub set_meta: String,
}

impl Queries {
    pub fn new(d: &dyn Dialect) -> Queries {
        let both = |f: &dyn Fn(bool) -> String| [rewrite(d, &f(false)), rewrite(d, &f(true))];
        Queries {
            latest: rewrite(
                d,
                &format!("SELECT {COLUMNS} FROM kv_log WHERE name = ? ORDER BY id DESC LIMIT 1"),
            ),
            insert: rewrite(
                d,
                &format!("INSERT INTO kv_log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
            ),
            list: both(&|b| {
                // Walk the (name, id) index in name order and stop at LIMIT: each candidate row
                // is kept only if it is its name's newest at the revision. Joining on a grouped
                // MAX(id) instead materialises every remaining key for each page, which makes a
                // paginated list quadratic in the number of objects.
                format!(
                    "SELECT k.id, k.name, k.created, k.deleted, k.create_revision, \
                     k.prev_revision, k.value \
                     FROM kv_log AS k \
                     WHERE {} AND k.name > ? \
                     AND k.id = (SELECT MAX(l.id) FROM kv_log AS l \
                                 WHERE l.name = k.name AND l.id <= ?) \
                     AND k.deleted = 0 ORDER BY k.name LIMIT ?",
                    range("k.name", b)
                )
            }),
            count: both(&|b| {
                format!(
                    "SELECT COUNT(*) FROM kv_log AS k \
                     JOIN (SELECT MAX(id) AS id FROM kv_log WHERE {} GROUP BY name) AS m \
                     ON k.id = m.id WHERE k.deleted = 0",
                    range("name", b)
                )
            }),
            after: both(&|b| {
                format!(
                    "SELECT k.id, k.name, k.created, k.deleted, k.create_revision, \
                     k.prev_revision, k.value, \
                     p.id, p.name, p.created, p.deleted, p.create_revision, \
                     p.prev_revision, p.value \
                     FROM kv_log AS k LEFT JOIN kv_log AS p ON p.id = k.prev_revision \
                     WHERE k.id > ? AND {} ORDER BY k.id",
                    range("k.name", b)
                )
            }),
            compact_candidates: rewrite(
                d,
                "SELECT id FROM kv_log WHERE id IN (\
                 SELECT prev_revision FROM kv_log \
                 WHERE id > ? AND id <= ? AND prev_revision != 0 \
                 UNION SELECT id FROM kv_log WHERE id > ? AND id <= ? AND deleted != 0) \
                 ORDER BY id",
            ),
            delete_row: rewrite(d, "DELETE FROM kv_log WHERE id = ?"),
            max_id: "SELECT COALESCE(MAX(id), 0) FROM kv_log".to_owned(),
            get_meta: rewrite(d, "SELECT value FROM kv_meta WHERE name = ?"),
            set_meta: rewrite(
                d,
                "INSERT INTO kv_meta (name, value) VALUES (?, ?) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            ),
        }
    }
}

/// Replaces each `?` with the dialect's placeholder for its position.
fn rewrite(d: &dyn Dialect, sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&d.placeholder(n));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dollar;
    impl Dialect for Dollar {
        fn name(&self) -> &'static str {
            "dollar"
        }
        fn schema(&self) -> Vec<String> {
            Vec::new()
        }
        fn connection_setup(&self, _: &crate::StoreOptions, _: bool) -> Vec<String> {
            Vec::new()
        }
        fn placeholder(&self, n: usize) -> String {
            format!("${n}")
        }
    }

    #[test]
    fn placeholders_are_rewritten_per_dialect() {
        let q = Queries::new(&Dollar);
        assert_eq!(q.delete_row, "DELETE FROM kv_log WHERE id = $1");
        assert!(q.list[1].contains("k.name >= $1 AND k.name < $2 AND k.name > $3"));
        assert!(q.list[1].contains("l.id <= $4"));
        assert!(q.list[1].ends_with("LIMIT $5"));
        assert!(q.list[0].contains("k.name >= $1 AND k.name > $2"));
        assert!(q.list[0].contains("l.id <= $3"));
    }
}
