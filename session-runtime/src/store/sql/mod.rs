//! What the SQL stores share.
//!
//! # Layout: one JSON column per session
//!
//! Each store keeps one row per session key, with the fields in one JSON object column, and
//! edits that object in place: PostgreSQL with `jsonb` `-` and `||`, SQLite and MySQL/MariaDB
//! with `json_remove` and `json_set`. That makes every operation one statement, hence one
//! round trip, and makes a patch atomic and field-level: the database merges
//! it into whatever the row holds when the statement runs, so a field another process wrote
//! after our load survives.
//!
//! The other layout, a row per (key, field), needs an upsert for the set fields, a delete for
//! the removed ones and an update of every row's expiry: three statements in a transaction,
//! that is four to five round trips per save instead of one, and an expiry copied into
//! every row. Loads cost the same in both (one indexed `SELECT`).
//!
//! Expiry is an `expires_at` column in milliseconds since the Unix epoch, taken from the
//! application's clock. A load ignores an expired row; a write to an expired row starts from
//! an empty object; `sweep()` deletes expired rows, and `spawn_sweeper` runs it periodically.
//!
//! Table names are validated (`[A-Za-z_][A-Za-z0-9_]*`, at most 52 characters, no SQL reserved
//! word) before they are put into SQL; keys, field names and values are always bound
//! parameters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::error::StoreError;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use crate::error::StoreOp;
use crate::store::{Patch, Record};

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "postgres")]
mod primary;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// The table name used when none is given.
pub(crate) const DEFAULT_TABLE: &str = "typed_sessions";

/// The longest table name: PostgreSQL keeps 63 bytes of an identifier, and the expiry index is
/// named `{table}_expires_at`.
const MAX_TABLE: usize = 63 - "_expires_at".len();

/// Words that cannot name a table unquoted in one of the SQL databases (the ones a session
/// table is likely to be called; the rest fail the first statement with the database's error).
const RESERVED: &[&str] = &[
    "all",
    "and",
    "as",
    "by",
    "case",
    "check",
    "column",
    "constraint",
    "create",
    "default",
    "delete",
    "desc",
    "distinct",
    "drop",
    "else",
    "end",
    "exists",
    "from",
    "group",
    "having",
    "in",
    "index",
    "insert",
    "into",
    "is",
    "join",
    "key",
    "keys",
    "limit",
    "not",
    "null",
    "on",
    "or",
    "order",
    "primary",
    "references",
    "select",
    "session",
    "set",
    "table",
    "then",
    "to",
    "union",
    "unique",
    "update",
    "user",
    "using",
    "values",
    "when",
    "where",
    "with",
];

/// Checks a table name before it is spliced into SQL (the one thing that cannot be bound).
pub(crate) fn table_name(backend: &'static str, name: &str) -> Result<Arc<str>, StoreError> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let refused = |why: &str| StoreError::Config {
        backend,
        message: format!("table name {name:?} is not allowed: {why}"),
    };
    if !valid_start
        || name.len() > MAX_TABLE
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(refused(&format!(
            "use letters, digits and '_', starting with a letter or '_', at most {MAX_TABLE} characters"
        )));
    }
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(refused("it is a reserved word in SQL"));
    }
    Ok(Arc::from(name))
}

/// Milliseconds since the Unix epoch; replaceable so tests can move time.
#[derive(Clone)]
pub(crate) struct Clock(Option<Arc<dyn Fn() -> i64 + Send + Sync>>);

impl Clock {
    pub(crate) fn system() -> Self {
        Clock(None)
    }

    pub(crate) fn custom(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Clock(Some(Arc::new(f)))
    }

    pub(crate) fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(f) => f(),
            None => crate::store::unix_ms(),
        }
    }

    /// The `expires_at` a write with `ttl` sets.
    pub(crate) fn expiry(&self, ttl: Option<Duration>) -> Option<i64> {
        let ttl = i64::try_from(ttl?.as_millis()).unwrap_or(i64::MAX);
        Some(self.now_ms().saturating_add(ttl.max(1)))
    }
}

#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
/// The JSON path of a top-level field, for `json_set`/`json_remove` (bound as a parameter).
pub(crate) fn json_path(
    backend: &'static str,
    key: &str,
    field: &str,
) -> Result<String, StoreError> {
    check_name(backend, key, field)?;
    Ok(format!("$.\"{field}\""))
}

#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
/// Refuses a field name a JSON path cannot name as it is written (see [`json_path`]).
pub(crate) fn check_name(backend: &'static str, key: &str, field: &str) -> Result<(), StoreError> {
    if field.contains(['"', '\\']) || field.chars().any(char::is_control) {
        return Err(StoreError::Malformed {
            backend,
            key: key.to_owned(),
            field: field.to_owned(),
            message: "field names cannot contain '\"', '\\' or control characters in a SQL store"
                .to_owned(),
        });
    }
    Ok(())
}

/// What a value stored in PostgreSQL's `jsonb` as `{"@json": "<its JSON text>"}` starts with.
/// `jsonb` refuses U+0000 in any string, so a value holding one is stored that way, as is a
/// value that starts like the wrapper itself, so that unwrapping never mistakes one.
#[cfg(feature = "postgres")]
const WRAPPED: &str = "{\"@json\"";

#[cfg(feature = "postgres")]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    #[serde(rename = "@json")]
    json: String,
}

/// Puts back the values [`set_object`] wrapped.
#[cfg(feature = "postgres")]
pub(crate) fn unwrap_values(record: &mut Record) {
    for value in record.fields.values_mut() {
        if value.starts_with(WRAPPED)
            && let Ok(Wrapped { json }) = serde_json::from_str(value)
        {
            *value = json;
        }
    }
}

/// The fields a patch sets, as one JSON object (the values are already JSON), values holding
/// U+0000 wrapped (see [`WRAPPED`]).
#[cfg(feature = "postgres")]
pub(crate) fn set_object(patch: &Patch<'_>) -> String {
    let mut object = String::with_capacity(2 + patch.bytes() + 4 * patch.set.len());
    object.push('{');
    for (i, (field, value)) in patch.set.iter().enumerate() {
        if i > 0 {
            object.push(',');
        }
        // A string always serialises; the fallback keeps this total.
        object.push_str(&serde_json::to_string(field).unwrap_or_else(|_| "\"\"".to_owned()));
        object.push(':');
        // `\u0000` in JSON text is U+0000 (or, harmlessly, an escaped backslash before "u0000").
        if value.contains("\\u0000") || value.starts_with(WRAPPED) {
            object.push_str("{\"@json\":");
            object.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned()));
            object.push('}');
        } else {
            object.push_str(value);
        }
    }
    object.push('}');
    object
}

/// The keys one page of a walk may hold, in key order: those from the prefix (or after the
/// cursor, when it is past the prefix) up to the end of the prefix's range.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone)]
pub(crate) struct KeyRange {
    /// The least key of the page, itself included unless `after`.
    pub(crate) from: String,
    /// Whether `from` is the last key of the page before (excluded).
    pub(crate) after: bool,
    /// Every key of the page is less than this; `None`: no end.
    pub(crate) to: Option<String>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl KeyRange {
    /// The range of the page after `cursor` (a key) of the walk over `prefix`; `None` when the
    /// cursor is past the prefix's range (the walk is over).
    pub(crate) fn new(prefix: &str, cursor: Option<&crate::store::Cursor>) -> Option<Self> {
        let to = crate::store::prefix_end(prefix);
        let range = match cursor.map(crate::store::Cursor::as_str) {
            Some(after) if after >= prefix => KeyRange {
                from: after.to_owned(),
                after: true,
                to,
            },
            _ => KeyRange {
                from: prefix.to_owned(),
                after: false,
                to,
            },
        };
        match &range.to {
            Some(to) if range.from.as_str() >= to.as_str() => None,
            _ => Some(range),
        }
    }

    /// The `WHERE` condition on `column`, with `from` as parameter `from` and `to` as
    /// parameter `to` (each written by `param`), e.g. `key > $1 AND key < $2`.
    pub(crate) fn condition(&self, column: &str, param: impl Fn(usize) -> String) -> String {
        let op = if self.after { ">" } else { ">=" };
        let mut condition = format!("{column} {op} {}", param(1));
        if self.to.is_some() {
            condition.push_str(&format!(" AND {column} < {}", param(2)));
        }
        condition
    }
}

/// A stored JSON object into a record of field -> JSON text.
pub(crate) fn parse_record(
    backend: &'static str,
    key: &str,
    text: &str,
) -> Result<Record, StoreError> {
    let fields: HashMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| StoreError::Malformed {
            backend,
            key: key.to_owned(),
            field: String::new(),
            message: format!("the stored session is not a JSON object: {e}"),
        })?;
    Ok(fields
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect())
}

/// A stored JSON object of field versions.
pub(crate) fn parse_versions(
    backend: &'static str,
    key: &str,
    text: &str,
) -> Result<HashMap<String, u64>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Malformed {
        backend,
        key: key.to_owned(),
        field: String::new(),
        message: format!("the stored versions are not an object of counts: {e}"),
    })
}

/// A stored JSON object of field writers (update ids).
pub(crate) fn parse_writers(
    backend: &'static str,
    key: &str,
    text: &str,
) -> Result<HashMap<String, i64>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Malformed {
        backend,
        key: key.to_owned(),
        field: String::new(),
        message: format!("the stored writers are not an object of update ids: {e}"),
    })
}

/// The writers a patch records, as one JSON object to merge into the stored ones.
pub(crate) fn writers_object(patch: &Patch<'_>) -> String {
    integer_object(&patch.writers)
}

/// `entries` as the text of one JSON object of integers, a name given twice holding its last
/// value. The names are borrowed and the text written directly: every patch sends one or two
/// of these, and a `serde_json` map of owned keys cost more than the rest of the statement's
/// preparation (BENCHMARKS.md, "SQLite: the statement's preparation").
pub(crate) fn integer_object(entries: &[(&str, i64)]) -> String {
    // A patch names a handful, scanned; one of many fields (up to `MAX_PATCH_FIELDS`) looks
    // each name's last place up instead, so that it stays linear. (A `BTreeMap` of the
    // entries, simpler, cost 1.6k more instructions per update than the scan.)
    let last: Option<HashMap<&str, usize>> = (entries.len() > 16).then(|| {
        entries
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (*name, i))
            .collect()
    });
    let given_again = |i: usize, name: &str| match &last {
        Some(last) => last.get(name) != Some(&i),
        None => entries[i + 1..].iter().any(|(later, _)| *later == name),
    };
    let mut text = String::with_capacity(2 + entries.len() * 24);
    text.push('{');
    for (i, (name, value)) in entries.iter().enumerate() {
        if given_again(i, name) {
            continue;
        }
        if text.len() > 1 {
            text.push(',');
        }
        push_json_string(&mut text, name);
        text.push(':');
        text.push_str(itoa::Buffer::new().format(*value));
    }
    text.push('}');
    text
}

/// `s` as a JSON string (quoted, with `"`, `\\` and control characters escaped).
pub(crate) fn push_json_string(text: &mut String, s: &str) {
    use std::fmt::Write as _;
    text.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // The common case (a field's name, a runtime slot): nothing to escape.
        text.push_str(s);
        text.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => text.push_str("\\\""),
            '\\' => text.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(text, "\\u{:04x}", u32::from(c));
            }
            c => text.push(c),
        }
    }
    text.push('"');
}

/// The fields a patch expects and their versions, as two lists the database can unnest.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn expectations<'p>(
    backend: &'static str,
    key: &str,
    patch: &Patch<'p>,
) -> Result<(Vec<&'p str>, Vec<i64>), StoreError> {
    let mut fields = Vec::with_capacity(patch.expect.len());
    let mut versions = Vec::with_capacity(patch.expect.len());
    for (field, version) in &patch.expect {
        fields.push(*field);
        versions.push(i64::try_from(*version).map_err(|_| StoreError::Malformed {
            backend,
            key: key.to_owned(),
            field: (*field).to_owned(),
            message: "a version beyond i64".to_owned(),
        })?);
    }
    Ok((fields, versions))
}

/// What a patch's written fields are stored at after it: for each one written with an
/// expected version, one more than that (the condition makes it the stored version), as a
/// JSON object; and the fields written with no expected version, whose new version only the
/// database can compute. `fields` and `versions` are [`expectations`]'s.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn new_versions<'p>(
    backend: &'static str,
    key: &str,
    patch: &Patch<'p>,
    fields: &[&'p str],
    versions: &[i64],
) -> Result<(String, Vec<&'p str>), StoreError> {
    let mut pinned = Vec::with_capacity(fields.len());
    let mut unpinned = Vec::new();
    for field in patch.written_fields() {
        let Some((_, version)) = fields.iter().zip(versions).find(|(f, _)| **f == field) else {
            unpinned.push(field);
            continue;
        };
        let next = version
            .checked_add(1)
            .ok_or_else(|| StoreError::Malformed {
                backend,
                key: key.to_owned(),
                field: field.to_owned(),
                message: "a version beyond i64".to_owned(),
            })?;
        pinned.push((field, next));
    }
    Ok((integer_object(&pinned), unpinned))
}

/// The conflict of a refused patch, given the record the store holds now (an empty one when
/// it holds none).
pub(crate) fn conflict(
    backend: &'static str,
    key: &str,
    patch: &Patch<'_>,
    current: Record,
) -> StoreError {
    StoreError::Conflict {
        backend,
        key: key.to_owned(),
        fields: patch
            .expect
            .iter()
            .filter(|(field, version)| current.version(field) != *version)
            .map(|(field, _)| (*field).to_owned())
            .collect(),
        current: Some(Box::new(current)),
    }
}

/// The `json_remove(..)`/`json_set(..)` expression that removes `removed` fields from `base`
/// and sets `set` fields, with one `?` per removed path, and a `?` path plus `value` per set
/// field, in that order.
///
/// Calls are nested in groups of at most [`ARGS_PER_CALL`] arguments, because SQLite limits
/// the number of arguments of a function (127 by default).
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) fn edit_expression(base: &str, removed: usize, set: usize, value: &str) -> String {
    edit_expression_with(base, removed, set, |_| value)
}

/// [`edit_expression`], with the placeholder of the `i`th set value `value(i)`.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) fn edit_expression_with<'v>(
    base: &str,
    removed: usize,
    set: usize,
    value: impl Fn(usize) -> &'v str,
) -> String {
    let mut expression = base.to_owned();
    for group in chunk_sizes(removed, ARGS_PER_CALL) {
        expression = format!("json_remove({expression}{})", ", ?".repeat(group));
    }
    let mut next = 0;
    for group in chunk_sizes(set, ARGS_PER_CALL / 2) {
        let mut arguments = String::new();
        for i in next..next + group {
            arguments.push_str(", ?, ");
            arguments.push_str(value(i));
        }
        next += group;
        expression = format!("json_set({expression}{arguments})");
    }
    expression
}

/// `total` split into groups of at most `size`, in order.
fn chunk_sizes(total: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..total)
        .step_by(size)
        .map(move |start| size.min(total - start))
}

/// The most arguments one `json_set`/`json_remove` call gets, the document excluded.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
const ARGS_PER_CALL: usize = 100;

#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
/// The paths of a patch, checked: removed fields first, then set fields.
pub(crate) fn patch_paths(
    backend: &'static str,
    key: &str,
    patch: &Patch<'_>,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let removed = patch
        .remove
        .iter()
        .map(|f| json_path(backend, key, f))
        .collect::<Result<_, _>>()?;
    let set = patch
        .set
        .iter()
        .map(|(f, _)| json_path(backend, key, f))
        .collect::<Result<_, _>>()?;
    Ok((removed, set))
}

/// SHA-256 of a key: the primary key where the database limits index key length.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn key_hash(key: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).to_vec()
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn db_error(
    backend: &'static str,
    op: StoreOp,
    key: &str,
    error: sqlx::Error,
) -> StoreError {
    StoreError::backend(backend, op, key, error)
}

/// How long a pooled connection may stay idle and still be used without a check first.
#[cfg(any(feature = "postgres", feature = "mysql"))]
const CHECKED_AFTER_IDLE: Duration = Duration::from_secs(10);

/// The pool and deadlines of a PostgreSQL or MySQL/MariaDB store that connects by itself.
///
/// * `max_connections` (default 16): the pool's size. A store call holds a connection for one
///   statement, so 16 serve hundreds of updates in flight; raise it only if the database has
///   the connections to spare.
/// * `timeout` (default 2 s): how long a call waits for a connection from the pool, and how
///   long the database lets one of its statements run or wait for a row lock
///   (`statement_timeout` and `lock_timeout` in PostgreSQL, `innodb_lock_wait_timeout`, in
///   whole seconds, in MySQL/MariaDB). A key whose row another client keeps locked then fails
///   its updates within the deadline instead of holding connections that other keys need.
///   The store itself gives up on a call after twice the deadline (a connection that died
///   without a word); over a pool of your own (`from_pool`), after 4 s.
///
/// A connection is taken from the pool without a check (sqlx's ping, a round trip) when it
/// was last used less than 10 s ago: sqlx pings it as it is given back. One idle longer is
/// pinged first, and replaced if it does not answer. So a call is one round trip while the
/// store is busy; if the server goes away between two calls, the next call on a connection
/// that was open then fails, as a call does when the server goes away during it.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use typed_session::store::SqlOptions;
/// use typed_session::PostgresStore;
///
/// # async fn run() -> Result<(), typed_session::StoreError> {
/// let options = SqlOptions::default().max_connections(32).timeout(Duration::from_secs(5));
/// let store = PostgresStore::connect_with("postgres://postgres@127.0.0.1/test", options).await?;
/// # Ok(()) }
/// ```
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(Debug, Clone, Copy)]
pub struct SqlOptions {
    pub(crate) max_connections: u32,
    pub(crate) timeout: Duration,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            max_connections: 16,
            timeout: Duration::from_secs(2),
        }
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl SqlOptions {
    /// The pool's size (at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// The deadline for a connection from the pool and for each statement (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long the store itself waits for a call: twice the server-side deadline, which
    /// should fire first.
    pub(crate) fn client_deadline(&self) -> Duration {
        self.timeout * 2
    }

    /// The pool's options. sqlx's default checks a connection with a ping each time it is
    /// taken from the pool, a second round trip for every call; here only one left idle
    /// longer than [`CHECKED_AFTER_IDLE`] is (see the type's documentation).
    pub(crate) fn pool<DB: sqlx::Database>(&self) -> sqlx::pool::PoolOptions<DB> {
        sqlx::pool::PoolOptions::<DB>::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.timeout)
            .test_before_acquire(false)
            .before_acquire(|connection, taken| {
                Box::pin(async move {
                    if taken.idle_for > CHECKED_AFTER_IDLE {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
    }
}

/// Runs `sweep` every `every` until the returned handle is aborted or dropped with the runtime.
pub(crate) fn spawn_sweeper<F, Fut>(
    backend: &'static str,
    every: Duration,
    sweep: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, StoreError>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match sweep().await {
                Ok(removed) => tracing::debug!(backend, removed, "expired sessions swept"),
                Err(error) => tracing::warn!(backend, %error, "sweeping expired sessions failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers_short_enough_for_their_index_and_not_reserved() {
        for good in ["typed_sessions", "_t", "T1", "orders", &"a".repeat(52)] {
            assert_eq!(table_name("sqlite", good).as_deref().ok(), Some(good));
        }
        for bad in [
            "",
            "1t",
            "t-1",
            "t;drop",
            "t t",
            "é",
            &"a".repeat(53),
            "order",
            "USER",
        ] {
            assert!(
                matches!(table_name("sqlite", bad), Err(StoreError::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_paths_quote_the_field_and_refuse_what_cannot_be_quoted() {
        assert_eq!(
            json_path("mysql", "k", "lang").ok().as_deref(),
            Some("$.\"lang\"")
        );
        assert_eq!(
            json_path("mysql", "k", "a.b").ok().as_deref(),
            Some("$.\"a.b\"")
        );
        for bad in ["a\"b", "a\\b", "a\nb", "\0"] {
            let error = json_path("mysql", "7:7", bad).expect_err(bad);
            assert!(
                matches!(&error, StoreError::Malformed { key, field, .. } if key == "7:7" && field == bad),
                "{error}"
            );
        }
    }

    #[test]
    fn chunks_cover_the_total_in_order() {
        assert_eq!(chunk_sizes(0, 100).collect::<Vec<_>>(), Vec::<usize>::new());
        assert_eq!(chunk_sizes(100, 100).collect::<Vec<_>>(), [100]);
        assert_eq!(chunk_sizes(250, 100).collect::<Vec<_>>(), [100, 100, 50]);
        assert_eq!(chunk_sizes(3, 1).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn edit_expressions_nest_removes_before_sets_with_one_placeholder_per_argument() {
        assert_eq!(edit_expression("data", 0, 0, "?"), "data");
        assert_eq!(
            edit_expression("data", 1, 2, "json(?)"),
            "json_set(json_remove(data, ?), ?, json(?), ?, json(?))"
        );
        assert_eq!(
            edit_expression_with("data", 0, 2, |i| if i == 0 { "?" } else { "json(?)" }),
            "json_set(data, ?, ?, ?, json(?))"
        );
        // Positions count across the nested calls.
        let across = edit_expression_with("data", 0, ARGS_PER_CALL / 2 + 1, |i| {
            if i == ARGS_PER_CALL / 2 {
                "?"
            } else {
                "json(?)"
            }
        });
        assert!(across.ends_with("), ?, ?)"), "{across}");
        assert_eq!(across.matches("json(?)").count(), ARGS_PER_CALL / 2);
        // No call gets more than ARGS_PER_CALL arguments besides the document.
        let wide = edit_expression("data", 0, ARGS_PER_CALL, "?");
        assert_eq!(wide.matches("json_set(").count(), 2);
        assert_eq!(wide.matches('?').count(), 2 * ARGS_PER_CALL);
    }

    #[test]
    fn new_versions_are_the_expected_plus_one_and_unexpected_writes_are_left_to_the_database() {
        let patch = Patch::new()
            .set_field("count", "3")
            .set_field("name", "\"x\"")
            .remove_field("old")
            .expect_version("count", 7)
            .expect_version("old", 0)
            .expect_version("read_only", 2);
        let (fields, versions) = expectations("test", "k", &patch).expect("versions fit");
        let (pinned, unpinned) =
            new_versions("test", "k", &patch, &fields, &versions).expect("versions fit");
        let pinned: serde_json::Value = serde_json::from_str(&pinned).expect("valid JSON");
        assert_eq!(pinned, serde_json::json!({"count": 8, "old": 1}));
        assert_eq!(unpinned, ["name"]);

        let at_the_end = Patch::new()
            .set_field("count", "1")
            .expect_version("count", i64::MAX as u64);
        let (fields, versions) = expectations("test", "k", &at_the_end).expect("fits");
        assert!(matches!(
            new_versions("test", "k", &at_the_end, &fields, &versions),
            Err(StoreError::Malformed { field, .. }) if field == "count"
        ));
    }

    #[test]
    fn integer_objects_are_json_objects_that_keep_the_last_of_a_repeated_name() {
        let text = integer_object(&[
            ("@0", 5),
            ("say \"hi\" \\ \n\u{1}", -1),
            ("@0", i64::MAX),
            ("é", i64::MIN),
            ("zero", 0),
            ("ten", -10),
        ]);
        let object: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            object,
            serde_json::json!({
                "@0": i64::MAX,
                "say \"hi\" \\ \n\u{1}": -1,
                "é": i64::MIN,
                "zero": 0,
                "ten": -10,
            })
        );
        assert_eq!(text.matches("@0").count(), 1, "{text}");
        assert_eq!(integer_object(&[]), "{}");

        // Past a handful of entries the repeats are found by look-up: the same answer.
        let names: Vec<String> = (0..40).map(|i| format!("f{}", i % 25)).collect();
        let entries: Vec<(&str, i64)> = names.iter().zip(0..).map(|(n, i)| (&**n, i)).collect();
        let text = integer_object(&entries);
        assert_eq!(text.matches("\"f0\"").count(), 1, "{text}");
        let object: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let expected: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(n, i)| ((*n).to_owned(), (*i).into()))
            .collect();
        assert_eq!(object, serde_json::Value::Object(expected));
    }

    #[test]
    fn set_objects_are_json_objects_of_the_encoded_values() {
        let patch = Patch::new()
            .set_field("count", "3")
            .set_field("say \"hi\"", "\"x\"");
        let object: serde_json::Value =
            serde_json::from_str(&set_object(&patch)).expect("valid JSON");
        assert_eq!(object, serde_json::json!({"count": 3, "say \"hi\"": "x"}));
    }

    #[test]
    fn a_stored_value_that_is_not_an_object_is_malformed_naming_the_whole_record() {
        let record = parse_record("postgres", "k", r#"{"a":1,"b":[1,2]}"#).expect("an object");
        assert_eq!(record["b"], "[1,2]");
        let error = parse_record("postgres", "k", "[1]").expect_err("not an object");
        assert!(
            matches!(&error, StoreError::Malformed { field, .. } if field.is_empty()),
            "{error}"
        );
    }

    #[test]
    fn expiry_is_now_plus_the_ttl_and_at_least_a_millisecond() {
        let clock = Clock::custom(|| 1_000);
        assert_eq!(clock.expiry(None), None);
        assert_eq!(clock.expiry(Some(Duration::from_secs(2))), Some(3_000));
        assert_eq!(clock.expiry(Some(Duration::ZERO)), Some(1_001));
        assert_eq!(clock.expiry(Some(Duration::MAX)), Some(i64::MAX));
    }
}
