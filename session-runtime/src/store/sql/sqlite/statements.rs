//! The statements of [`SqliteStore`](super::SqliteStore): those written once per table, and a
//! patch's, written once per [`Shape`] (how many fields it sets, removes and expects, and how
//! it conditions the row).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::ToSql;

use crate::store::sql::{edit_expression, edit_expression_with};

/// The statements that do not depend on a patch's shape, written once per table.
pub(super) struct Statements {
    pub(super) table: Arc<str>,
    pub(super) load: String,
    /// A patch that only renews the expiry of a live row.
    pub(super) renew: String,
    pub(super) delete: String,
    pub(super) sweep: String,
    /// The patch statements written so far, by shape: a patch's text is built once per
    /// shape, not per patch (at most [`PATCH_SHAPES`] kept; any other is built each time).
    patches: Mutex<HashMap<Shape, Arc<str>, foldhash::fast::RandomState>>,
}

/// How many patch statements a store keeps written. A shape counts fields, not names, so
/// the middleware sends a handful (how many fields its updates write and read together, and
/// which of the values they write are integers); a caller of the `Store` API that sends more
/// shapes gets the others built per patch.
pub(super) const PATCH_SHAPES: usize = 64;

/// What a patch statement's text depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// It may create the row: every version it expects is 0 ("never written").
    pub(super) creates: bool,
    pub(super) removed: usize,
    pub(super) set: usize,
    pub(super) expected: usize,
    /// It renews the expiry (a ttl is set).
    pub(super) renews: bool,
    /// It writes the row's versions and writers whole, on the condition that they are the
    /// ones this connection knows (`creates` and `expected` are then 0).
    pub(super) known: bool,
    /// With `known`: it writes `data` whole too, on the same condition (`removed`, `set` and
    /// `integers` are then 0).
    pub(super) whole: bool,
    /// With `known`: the set values bound as SQL integers, by bit, of the first
    /// [`INTEGER_BITS`] ([`SetValue`]); the others go through `json(?)`.
    pub(super) integers: u64,
}

/// A set value as bound to a `known` patch statement. A value whose JSON text is an integer
/// as SQLite writes one (`-12`, not `+12`, `012` or `1e2`) is bound as an integer, which
/// `json_set` stores as that same JSON number: no `json(?)` parses and writes it again. Any
/// other value is bound as its text, under `json(?)`.
#[derive(Debug, Clone, Copy)]
pub(super) enum SetValue<'a> {
    Integer(i64),
    Json(&'a str),
}

/// How many set values a shape can mark as integers (the bits of [`Shape::integers`]); any
/// later one is bound as text.
pub(super) const INTEGER_BITS: usize = 64;

impl<'a> SetValue<'a> {
    fn of(text: &'a str) -> Self {
        match text.parse::<i64>() {
            Ok(n) if itoa::Buffer::new().format(n) == text => SetValue::Integer(n),
            _ => SetValue::Json(text),
        }
    }

    /// The set values of a patch as bound, and which of them are integers, by bit.
    pub(super) fn all(set: &'a [(&str, String)]) -> (Vec<Self>, u64) {
        let mut integers = 0;
        let values = (set.iter().enumerate())
            .map(|(i, (_, text))| match SetValue::of(text) {
                SetValue::Integer(n) if i < INTEGER_BITS => {
                    integers |= 1 << i;
                    SetValue::Integer(n)
                }
                _ => SetValue::Json(text),
            })
            .collect();
        (values, integers)
    }

    /// Whether the `i`th set value of a statement whose shape has `integers` is bound as one.
    fn is_integer(integers: u64, i: usize) -> bool {
        i < INTEGER_BITS && integers >> i & 1 == 1
    }
}

impl ToSql for SetValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match *self {
            SetValue::Integer(n) => n.into(),
            SetValue::Json(text) => text.into(),
        })
    }
}

impl Statements {
    /// The text of the patch statement of `shape`.
    pub(super) fn patch(&self, shape: Shape) -> Arc<str> {
        let mut patches = self.patches.lock();
        if let Some(sql) = patches.get(&shape) {
            return Arc::clone(sql);
        }
        let sql: Arc<str> = Arc::from(patch_statement(&self.table, shape));
        if patches.len() < PATCH_SHAPES {
            patches.insert(shape, Arc::clone(&sql));
        }
        sql
    }

    pub(super) fn new(table: Arc<str>) -> Self {
        let t = &table;
        Statements {
            patches: Mutex::default(),
            load: format!(
                "SELECT data, versions, writers, expires_at FROM {t} WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = ?2 WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?3)"
            ),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?1"),
            table,
        }
    }
}

/// Whether `text` is one JSON value, as `json(?)` takes it.
pub(super) fn is_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

/// The statement that applies a patch of `shape` to `table`, with its `?` in the order
/// `SqliteStore::write_on` (in `patch`) binds them.
fn patch_statement(t: &str, shape: Shape) -> String {
    let live_versions =
        "(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{}' ELSE versions END)";
    let live_writers =
        "(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{}' ELSE writers END)";
    let renew = if shape.renews { ", expires_at = ?" } else { "" };
    if shape.whole {
        // As below, and SQLite neither parses nor writes JSON: the row's data is the one
        // kept, so the new one was written from it.
        return format!(
            "UPDATE {t} SET data = ?, versions = ?, writers = ?{renew} \
             WHERE key = ? AND data = ? AND versions = ? AND writers = ? AND (expires_at IS NULL OR expires_at > ?)"
        );
    }
    if shape.known {
        // Equal columns are equal versions of every field: the patch's condition, checked
        // against the kept versions before it was sent, holds on the row.
        let update = edit_expression_with("data", shape.removed, shape.set, |i| {
            if SetValue::is_integer(shape.integers, i) {
                "?"
            } else {
                "json(?)"
            }
        });
        return format!(
            "UPDATE {t} SET data = {update}, versions = ?, writers = ?{renew} \
             WHERE key = ? AND versions = ? AND writers = ? AND (expires_at IS NULL OR expires_at > ?)"
        );
    }
    if shape.creates {
        let insert = edit_expression("'{}'", 0, shape.set, "json(?)");
        let current =
            "(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{}' ELSE data END)";
        let update = edit_expression(current, shape.removed, shape.set, "json(?)");
        let condition = condition(live_versions, shape.expected);
        format!(
            "INSERT INTO {t} (key, data, versions, writers, expires_at) VALUES (?, {insert}, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET data = {update}, versions = json_patch({live_versions}, ?), \
             writers = json_patch({live_writers}, ?), \
             expires_at = COALESCE(excluded.expires_at, CASE WHEN expires_at <= ? THEN NULL ELSE expires_at END) \
             WHERE {condition} {RETURNING}"
        )
    } else {
        let update = edit_expression("data", shape.removed, shape.set, "json(?)");
        let condition = condition("versions", shape.expected);
        // The row is live (the condition says so): without a ttl its expiry stays as it is,
        // and is not named at all. Naming it, even unchanged, rewrites its index entry: a
        // second page, and a second WAL frame, in every commit.
        format!(
            "UPDATE {t} SET data = {update}, versions = json_patch(versions, ?), \
             writers = json_patch(writers, ?){renew} \
             WHERE key = ? AND (expires_at IS NULL OR expires_at > ?) AND {condition} {RETURNING}"
        )
    }
}

/// What a statement that edits a row field by field returns of it: its columns as it left
/// them, for the connection to keep (the statements that write them whole know them already).
const RETURNING: &str = "RETURNING data, versions, writers";

/// `n` conditions, each that the version at path `?` in `versions` is `?` (absent is 0).
fn condition(versions: &str, n: usize) -> String {
    let mut condition = String::from("1");
    for _ in 0..n {
        condition.push_str(&format!(
            " AND COALESCE(json_extract({versions}, ?), 0) = ?"
        ));
    }
    condition
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_integers_as_sqlite_writes_them_are_bound_as_integers() {
        for (text, n) in [
            ("0", 0),
            ("-12", -12),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert!(
                matches!(SetValue::of(text), SetValue::Integer(m) if m == n),
                "{text}"
            );
        }
        for text in [
            "+5",
            "012",
            "-0",
            "1e2",
            "5.0",
            "18446744073709551615",
            " 5",
            "\"5\"",
            "null",
        ] {
            assert!(
                matches!(SetValue::of(text), SetValue::Json(t) if t == text),
                "{text}"
            );
        }
        let set = [("a", "1"), ("b", "\"a\""), ("c", "-3")].map(|(f, v)| (f, v.to_owned()));
        assert_eq!(SetValue::all(&set).1, 0b101);
        // Only the first INTEGER_BITS can be marked; a later integer is bound as text.
        let wide = vec![("f", "1".to_owned()); INTEGER_BITS + 1];
        let (values, integers) = SetValue::all(&wide);
        assert_eq!(integers, u64::MAX);
        assert!(matches!(values[INTEGER_BITS], SetValue::Json("1")));
        assert!(SetValue::is_integer(integers, INTEGER_BITS - 1));
        assert!(!SetValue::is_integer(integers, INTEGER_BITS));
    }
}
