//! What [`SqliteStore`](super::SqliteStore) tells of [`Store::revision`](crate::Store::revision):
//! the records its connection last read or wrote, current while no other connection has
//! committed since.
//!
//! SQLite counts the commits of other connections for each connection (`PRAGMA
//! data_version`: it changes when another connection, of this process or another, commits,
//! and never for the connection's own). So while it stays the same, every change to a record
//! went through this connection, which counts them here; once it moves, nothing here is
//! trusted and every revision is unknown until the record is read again.
//!
//! With a record's revision it keeps the row's `versions` and `writers` columns as they were
//! read or written ([`Columns`]), so that the next patch of the record can write them whole,
//! on the condition that they are still the same, instead of merging its changes into them in
//! the statement (ARCHITECTURE.md, "Decoded between updates").

use std::collections::HashMap;

use rusqlite::Connection;

use crate::store::sql::push_json_string;
use crate::store::{Record, Revision};

/// How many records are followed at once. The runtime keeps at most 10,000 sessions decoded
/// between updates; past this many, the whole table is forgotten (every session then loads
/// once more) rather than grow.
const FOLLOWED: usize = 16_384;

/// The records this connection read or wrote, as of one `data_version`.
#[derive(Debug, Default)]
pub(super) struct Revisions {
    /// No other connection can commit: the database is this connection's alone (in memory,
    /// or its locks held: [`Locking::Exclusive`](super::Locking::Exclusive)), and nothing
    /// needs checking.
    pub(super) private: bool,
    /// The store was asked for [`Locking::Exclusive`](super::Locking::Exclusive): its locks
    /// are taken again whenever the connection comes back from the application.
    pub(super) exclusive: bool,
    /// `PRAGMA data_version` when `known` was last checked; `None` before the first check.
    data_version: Option<i64>,
    /// The `life` of the next record seen for the first time: each is one no record had.
    next_life: u64,
    known: HashMap<Box<str>, Known, foldhash::fast::RandomState>,
    /// What the patches written in the open group transaction will make of their records
    /// once it commits; meanwhile their revisions are unknown.
    pending: HashMap<Box<str>, Known, foldhash::fast::RandomState>,
}

/// A record as this connection last left it.
#[derive(Debug, Clone)]
enum Known {
    /// No row, or none live.
    Absent,
    At {
        life: u64,
        writes: u64,
        /// Milliseconds since the Unix epoch; `None` lives until deleted.
        expires_at: Option<i64>,
        /// The row's `versions` and `writers`, when this connection knows their texts.
        columns: Option<Box<Columns>>,
    },
}

/// The longest column text kept beside a revision: a record with more fields than that (or,
/// for `data`, larger values) has its patches merged by the statement, as when nothing is
/// kept.
const LONGEST_KEPT: usize = 2048;

/// What a write left known of its row's columns.
#[derive(Debug)]
pub(super) enum Written {
    /// They are the ones kept ([`Revisions::columns_mut`]), as the write updated them.
    Kept,
    /// The write returned them.
    Returned(Box<Columns>),
    /// Not known.
    Unknown,
}

/// A row's columns as this connection last read or wrote them.
#[derive(Debug, Clone)]
pub(super) struct Columns {
    pub(super) versions: Object<i64>,
    pub(super) writers: Object<i64>,
    /// `data`, when it is short enough to keep: a patch then writes it whole, and SQLite
    /// neither parses nor writes JSON.
    pub(super) data: Option<Object<Box<str>>>,
}

/// What a JSON object kept beside a revision holds per name: a count, or a value's JSON text.
pub(super) trait Member {
    /// What the object keeps of it.
    type Kept: Member;
    /// Appends its JSON text.
    fn push_to(&self, text: &mut String);
    fn kept(&self) -> Self::Kept;
}

impl Member for i64 {
    type Kept = i64;
    fn push_to(&self, text: &mut String) {
        text.push_str(itoa::Buffer::new().format(*self));
    }
    fn kept(&self) -> i64 {
        *self
    }
}

/// A value's JSON text, kept.
impl Member for Box<str> {
    type Kept = Box<str>;
    fn push_to(&self, text: &mut String) {
        text.push_str(self);
    }
    fn kept(&self) -> Box<str> {
        self.clone()
    }
}

/// A value's JSON text, as a patch carries it.
impl Member for String {
    type Kept = Box<str>;
    fn push_to(&self, text: &mut String) {
        text.push_str(self);
    }
    fn kept(&self) -> Box<str> {
        Box::from(self.as_str())
    }
}

/// A JSON object as it stands in a column: its text, which a statement compares with the
/// row's, and its entries, which the next text is written from.
#[derive(Debug, Clone)]
pub(super) struct Object<V> {
    pub(super) text: String,
    entries: Vec<Entry<V>>,
}

/// One name of an [`Object`], with its value.
#[derive(Debug, Clone)]
struct Entry<V> {
    name: Box<str>,
    /// The name as the object's text writes it, quoted and followed by `:`: written once, as
    /// every text the object makes writes it again.
    key: Box<str>,
    value: V,
}

impl<V> Entry<V> {
    fn new(name: &str, value: V) -> Self {
        let mut key = String::with_capacity(name.len() + 3);
        push_key(&mut key, name);
        Entry {
            name: Box::from(name),
            key: key.into_boxed_str(),
            value,
        }
    }
}

/// Writes `name` as a key of a JSON object: quoted, escaped, followed by `:`.
fn push_key(text: &mut String, name: &str) {
    push_json_string(text, name);
    text.push(':');
}

impl Columns {
    /// A row's columns as read (`record` parsed from them), to keep; `None` if its `versions`
    /// or `writers` are too long to keep (a `data` too long is not kept, the rest is).
    pub(super) fn of_row(
        data: String,
        versions: String,
        writers: String,
        record: &Record,
    ) -> Option<Self> {
        // Versions beyond `i64` are never written (a patch refuses them), nor kept.
        let counts: Option<Vec<(&str, i64)>> = (record.versions.iter())
            .map(|(field, version)| Some((field.as_str(), i64::try_from(*version).ok()?)))
            .collect();
        let values =
            (record.fields.iter()).map(|(name, value)| (name.as_str(), Box::from(&**value)));
        Some(Columns {
            versions: Object::new(versions, counts?)?,
            writers: Object::new(
                writers,
                (record.writers.iter()).map(|(name, id)| (name.as_str(), *id)),
            )?,
            data: Object::new(data, values),
        })
    }
}

impl<V: Member<Kept = V>> Object<V> {
    /// The column `text`, whose entries are `entries`; `None` if it is too long to keep.
    pub(super) fn new<'n>(
        text: String,
        entries: impl IntoIterator<Item = (&'n str, V)>,
    ) -> Option<Self> {
        (text.len() <= LONGEST_KEPT).then(|| Object {
            text,
            entries: entries
                .into_iter()
                .map(|(name, value)| Entry::new(name, value))
                .collect(),
        })
    }

    /// The entry of `name`, if the object has one.
    pub(super) fn get(&self, name: &str) -> Option<&V> {
        self.entries
            .iter()
            .find(|entry| &*entry.name == name)
            .map(|entry| &entry.value)
    }

    /// The text of this object with the entries `removed` taken out and `changes` set, as
    /// SQLite's `json_patch` merges an object of counts, and `json_set(json_remove(..))`
    /// edits one of values: a kept name takes its last value where it stands, a new one is
    /// added where it is first given.
    pub(super) fn merged_text<C: Member<Kept = V>>(
        &self,
        changes: &[(&str, C)],
        removed: &[&str],
    ) -> String {
        let last = |name: &str| changes.iter().rev().find(|(changed, _)| *changed == name);
        let mut text = String::with_capacity(self.text.len() + changes.len() * 16);
        text.push('{');
        let comma = |text: &mut String| {
            if text.len() > 1 {
                text.push(',');
            }
        };
        for entry in &self.entries {
            if removed.contains(&&*entry.name) {
                continue;
            }
            comma(&mut text);
            text.push_str(&entry.key);
            match last(&entry.name) {
                Some((_, changed)) => changed.push_to(&mut text),
                None => entry.value.push_to(&mut text),
            }
        }
        let kept = |name: &str| !removed.contains(&name) && self.get(name).is_some();
        for (i, (name, _)) in changes.iter().enumerate() {
            let given_before = changes[..i].iter().any(|(earlier, _)| earlier == name);
            if !kept(name)
                && !given_before
                && let Some((_, value)) = last(name)
            {
                comma(&mut text);
                push_key(&mut text, name);
                value.push_to(&mut text);
            }
        }
        text.push('}');
        text
    }

    /// This object after `changes` and `removed`, whose text is `text`
    /// ([`merged_text`](Self::merged_text)). Returns whether it is still short enough to keep.
    #[must_use]
    pub(super) fn merge<C: Member<Kept = V>>(
        &mut self,
        changes: &[(&str, C)],
        removed: &[&str],
        text: String,
    ) -> bool {
        self.entries
            .retain(|entry| !removed.contains(&&*entry.name));
        for (name, value) in changes {
            match self.entries.iter_mut().find(|entry| &*entry.name == *name) {
                Some(entry) => entry.value = value.kept(),
                None => self.entries.push(Entry::new(name, value.kept())),
            }
        }
        self.text = text;
        self.text.len() <= LONGEST_KEPT
    }
}

/// What an apply that committed left of its row's expiry.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expiry {
    /// Set by the patch (a ttl).
    Set(i64),
    /// Left as it was on a live row; none on a row the patch created.
    Kept,
}

impl Revisions {
    /// Whether what is known is still current: no other connection committed since the last
    /// check. When one did, everything known is forgotten. Run it before a read whose outcome
    /// is to be recorded: a commit that lands between the check and the read is seen by the
    /// next check.
    pub(super) fn current(&mut self, connection: &Connection) -> bool {
        if self.private {
            return true;
        }
        let version = connection
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)))
            .ok();
        if version.is_none() || version != self.data_version {
            // What is pending was built on what was known: it goes too.
            self.known.clear();
            self.pending.clear();
            self.data_version = version;
        }
        version.is_some()
    }

    /// Whether `key`'s record is known, if nothing changed since the last check.
    pub(super) fn knows(&self, key: &str) -> bool {
        self.known.contains_key(key)
    }

    /// The revision of `key`'s record, if it is known (after [`current`](Self::current)).
    pub(super) fn revision(&self, key: &str, now_ms: impl FnOnce() -> i64) -> Revision {
        match self.known.get(key) {
            None => Revision::Unknown,
            Some(Known::Absent) => Revision::Absent,
            Some(Known::At {
                life,
                writes,
                expires_at,
                ..
            }) => match expires_at {
                Some(at) if *at <= now_ms() => Revision::Absent,
                _ => Revision::At {
                    life: *life,
                    writes: *writes,
                },
            },
        }
    }

    /// A read found `key`'s row (`Some`, with its expiry and its columns if they are kept) or
    /// no live one (`None`), after [`current`](Self::current). A record seen for the first
    /// time starts a new life: the revision need not count its writes from its creation, only
    /// tell its states apart.
    pub(super) fn read(&mut self, key: &str, row: Option<(Option<i64>, Option<Columns>)>) {
        if let Some(known) = self.known.get_mut(key) {
            // Nothing committed since it was counted: the row read is the one counted.
            if let (Known::At { columns, .. }, Some((_, Some(read)))) = (known, row) {
                columns.get_or_insert(Box::new(read));
            }
            return;
        }
        let known = match row {
            None => Known::Absent,
            Some((expires_at, columns)) => Known::At {
                life: self.new_life(),
                writes: 0,
                expires_at,
                columns: columns.map(Box::new),
            },
        };
        self.insert(key, known);
    }

    /// The columns of `key`'s live row at `now_ms`, as the patches of this connection left
    /// them (those of the open group transaction included), if they are kept.
    pub(super) fn columns_mut(&mut self, key: &str, now_ms: i64) -> Option<&mut Columns> {
        match self.latest_mut(key)? {
            Known::At {
                expires_at,
                columns: Some(columns),
                ..
            } if expires_at.is_none_or(|at| at > now_ms) => Some(columns),
            _ => None,
        }
    }

    /// An apply to `key` succeeded at `now_ms`: committed, or written in the open group
    /// transaction (`pending`), to count once it commits ([`ended`](Self::ended)).
    /// `written`: what is known of the row's columns after it.
    pub(super) fn wrote(
        &mut self,
        key: &str,
        now_ms: i64,
        expiry: Expiry,
        pending: bool,
        written: Written,
    ) {
        let mut live = match self.latest_mut(key) {
            Some(Known::At {
                life,
                writes,
                expires_at,
                columns,
            }) if expires_at.is_none_or(|at| at > now_ms) => {
                Some((*life, *writes, *expires_at, columns.take()))
            }
            Some(_) => None,
            None if matches!(expiry, Expiry::Set(_)) => None,
            // Neither how the row stood nor so its expiry is known.
            None => return self.forget(key),
        };
        let columns = match written {
            Written::Kept => live.as_mut().and_then(|(.., kept)| kept.take()),
            Written::Returned(columns) => Some(columns),
            Written::Unknown => None,
        };
        let after = match live {
            Some((life, writes, expires_at, _)) => Known::At {
                life,
                writes: writes.saturating_add(1),
                expires_at: match expiry {
                    Expiry::Set(at) => Some(at),
                    Expiry::Kept => expires_at,
                },
                columns,
            },
            None => Known::At {
                life: self.new_life(),
                writes: 0,
                expires_at: match expiry {
                    Expiry::Set(at) => Some(at),
                    Expiry::Kept => None,
                },
                columns,
            },
        };
        if pending {
            self.known.remove(key);
            self.pending.insert(Box::from(key), after);
        } else {
            self.insert(key, after);
        }
    }

    /// The open group transaction ended: what its patches made is known if it `committed`.
    pub(super) fn ended(&mut self, committed: bool) {
        let pending = std::mem::take(&mut self.pending);
        if committed {
            for (key, after) in pending {
                self.insert(&key, after);
            }
        }
    }

    /// `key`'s row was deleted.
    pub(super) fn deleted(&mut self, key: &str) {
        self.insert(key, Known::Absent);
    }

    /// What became of `key`'s record is not known (a failed call, a write not yet committed).
    pub(super) fn forget(&mut self, key: &str) {
        self.known.remove(key);
        self.pending.remove(key);
    }

    /// Nothing is known any more (the connection was handed to the application).
    pub(super) fn clear(&mut self) {
        self.known.clear();
        self.pending.clear();
        self.data_version = None;
    }

    /// What this connection last made of `key`'s record: the open group's patch, if it wrote
    /// one, else what is known.
    fn latest_mut(&mut self, key: &str) -> Option<&mut Known> {
        match self.pending.get_mut(key) {
            Some(pending) => Some(pending),
            None => self.known.get_mut(key),
        }
    }

    fn new_life(&mut self) -> u64 {
        self.next_life = self.next_life.wrapping_add(1);
        self.next_life
    }

    fn insert(&mut self, key: &str, known: Known) {
        if let Some(slot) = self.known.get_mut(key) {
            *slot = known;
            return;
        }
        if self.known.len() >= FOLLOWED {
            self.known.clear();
        }
        self.known.insert(Box::from(key), known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite's `json_patch` makes of `text` with `changes` merged in.
    fn json_patch(text: &str, changes: &[(&str, i64)]) -> String {
        let connection = Connection::open_in_memory().expect("an in-memory database");
        connection
            .query_row(
                "SELECT json_patch(?1, ?2)",
                (text, crate::store::sql::integer_object(changes)),
                |row| row.get(0),
            )
            .expect("json_patch")
    }

    #[test]
    fn merged_text_is_what_json_patch_makes_of_the_same_changes() {
        let entries = [("a", 1), ("b\"q", 7), ("@3", -2)];
        let text = r#"{"a":1,"b\"q":7,"@3":-2}"#;
        let cases: [&[(&str, i64)]; 6] = [
            &[],
            &[("a", 2)],
            &[("c", 1)],
            &[("b\"q", 8), ("new", 3), ("a", 9)],
            &[("x", 1), ("x", 2), ("a", 5), ("a", 6)],
            &[("@3", i64::MAX), ("é", i64::MIN)],
        ];
        for changes in cases {
            let mut counts = Object::new(text.to_owned(), entries).expect("short");
            let merged = counts.merged_text(changes, &[]);
            assert_eq!(merged, json_patch(text, changes), "{changes:?}");
            assert!(counts.merge(changes, &[], merged.clone()));
            // The entries were merged as the text was: the next text starts from both.
            assert_eq!(counts.merged_text::<i64>(&[], &[]), merged, "{changes:?}");
        }
    }

    #[test]
    fn a_text_too_long_is_not_kept() {
        let long = format!(r#"{{"{}":1}}"#, "f".repeat(LONGEST_KEPT));
        assert!(Object::new(long, [("f", 1)]).is_none());
        let mut counts = Object::new("{}".to_owned(), []).expect("short");
        let name = "g".repeat(LONGEST_KEPT);
        let changes = [(name.as_str(), 1)];
        let merged = counts.merged_text(&changes, &[]);
        assert!(!counts.merge(&changes, &[], merged), "grown past the bound");
    }

    /// What SQLite's `json_set(json_remove(text, ..), ..)` (a patch statement's edit of
    /// `data`) makes of `text`.
    fn json_edit(text: &str, set: &[(&str, String)], removed: &[&str]) -> String {
        let connection = Connection::open_in_memory().expect("an in-memory database");
        let path = |name: &str| {
            let mut path = String::from("$.");
            push_json_string(&mut path, name);
            path
        };
        let mut sql = String::from("SELECT json_set(json_remove(?");
        let mut params: Vec<String> = vec![text.to_owned()];
        for name in removed {
            sql.push_str(", ?");
            params.push(path(name));
        }
        sql.push(')');
        for (name, value) in set {
            sql.push_str(", ?, json(?)");
            params.extend([path(name), value.clone()]);
        }
        sql.push(')');
        connection
            .query_row(&sql, rusqlite::params_from_iter(&params), |row| row.get(0))
            .expect("json_set")
    }

    #[test]
    fn merged_data_is_what_the_statement_makes_of_the_same_patch() {
        let entries = [
            ("count", "3"),
            ("lang", r#""de""#),
            ("cart", r#"{"items":[1,2],"note":"a \"b\""}"#),
            ("two words", "null"),
        ];
        let text =
            r#"{"count":3,"lang":"de","cart":{"items":[1,2],"note":"a \"b\""},"two words":null}"#;
        fn set(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
            pairs
                .iter()
                .map(|(name, value)| (*name, (*value).to_owned()))
                .collect()
        }
        // A patch's set fields, and the fields it removes.
        type Edit = (Vec<(&'static str, String)>, &'static [&'static str]);
        let cases: [Edit; 7] = [
            (set(&[]), &[]),
            (set(&[("count", "4")]), &[]),
            (set(&[("new", r#"[true,{"é":1}]"#)]), &[]),
            (set(&[]), &["lang", "missing"]),
            // Removed and set again: json_set adds it back at the end.
            (set(&[("lang", r#""fr""#), ("count", "5")]), &["lang"]),
            (
                set(&[("x", "1"), ("x", "2"), ("count", "6"), ("count", "7")]),
                &[],
            ),
            (set(&[("two words", r#""\n""#), ("é", "0")]), &["cart"]),
        ];
        for (changes, removed) in cases {
            let kept = entries.map(|(name, value)| (name, Box::<str>::from(value)));
            let mut data = Object::new(text.to_owned(), kept).expect("short");
            let merged = data.merged_text(&changes, removed);
            assert_eq!(
                merged,
                json_edit(text, &changes, removed),
                "{changes:?} {removed:?}"
            );
            assert!(data.merge(&changes, removed, merged.clone()));
            assert_eq!(
                data.merged_text::<String>(&[], &[]),
                merged,
                "{changes:?} {removed:?}"
            );
        }
    }
}
