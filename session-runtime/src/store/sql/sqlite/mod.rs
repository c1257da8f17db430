//! [`SqliteStore`]: sessions in an embedded SQLite database (feature `sqlite`).
//!
//! The store and its statements are here; `group` shares one transaction among the patches of
//! updates in flight together, and `blocking` runs a call on the calling task or, when it
//! would wait, on a blocking thread.

mod blocking;
mod group;
mod revisions;

use blocking::{OwnedPatch, is_busy};
use group::{Group, Member};
use revisions::{Columns, Expiry, Object, Revisions};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params_from_iter};

use super::{
    Clock, DEFAULT_TABLE, KeyRange, check_name, conflict, edit_expression, edit_expression_with,
    integer_object, json_path, parse_record, parse_versions, parse_writers, patch_paths,
    table_name, writers_object,
};
use crate::error::{StoreError, StoreOp};
use crate::store::{Cursor, Page, Patch, Record, Revision, Store, StoreFuture, page_of};

const BACKEND: &str = "sqlite";

/// What an acknowledged write of [`SqliteStore`] survives (SQLite's `synchronous` setting, in
/// WAL mode; [`SqliteStore::with_durability`]).
///
/// | | process killed | OS crash or power loss |
/// |---|---|---|
/// | `Normal` | kept | the last commits before it may be lost (never a corrupt file) |
/// | `Full` | kept | kept |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = NORMAL`: a commit is acknowledged once it is in the write-ahead log,
    /// before the log is synced to the disk (synced at checkpoints).
    #[default]
    Normal,
    /// `synchronous = FULL`: a commit is acknowledged once the log is synced to the disk.
    Full,
}

/// Which connections may use the database file while a [`SqliteStore`] has it open
/// ([`SqliteStore::with_locking`]; SQLite's `locking_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Locking {
    /// Any connection, of this process or another (a second replica, the CLI): each statement
    /// takes SQLite's locks and gives them back, and a session kept decoded between updates is
    /// checked against the database's count of other connections' commits before it is used.
    #[default]
    Normal,
    /// This store's connection alone, for as long as it is open: the locks are taken once and
    /// kept, so no statement takes or gives back a lock, and a session kept decoded needs no
    /// check. Every other connection, of this process or another (the CLI too), is refused
    /// with "database is locked" meanwhile.
    Exclusive,
}

/// Sessions in SQLite, embedded: a file, or memory. SQLite is compiled in, so a fresh machine
/// needs no system library.
///
/// Table (`typed_sessions` unless [`with_table`](Self::with_table)):
///
/// ```sql
/// CREATE TABLE typed_sessions (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL,
///     versions TEXT NOT NULL DEFAULT '{}', writers TEXT NOT NULL DEFAULT '{}', expires_at INTEGER);
/// CREATE INDEX typed_sessions_expiring ON typed_sessions (expires_at) WHERE expires_at IS NOT NULL;
/// ```
///
/// `data` is a JSON object of the stored fields, e.g. `{"count":3,"lang":"de"}`, `versions`
/// and `writers` objects of their versions and last writers. A patch is one statement. Where
/// the connection knows the row's columns as it last read or wrote them (a session kept
/// decoded between updates, in steady state), it writes them whole on the condition that
/// the row still holds those, so SQLite parses no JSON; otherwise it edits them, e.g. `data =
/// json_set(json_remove(data, ..), ..)`, on the condition of each field's version. See the
/// `sql` module docs for why a JSON column rather than a row per field.
///
/// Statements run on the calling task, under the store's lock on its connection: with WAL
/// and `synchronous=NORMAL` a load or a patch takes microseconds, less than the two thread
/// hand-offs a worker-thread design costs per statement. While another process holds the
/// database's write lock, a statement waits for it up to the busy timeout (5 s), blocking
/// that thread.
///
/// The patches of updates in flight together share one commit, and one update at a time
/// commits on its own ([`with_group_commit`](Self::with_group_commit)).
///
/// It tells [revisions](Store::revision) of the records its connection read and wrote, so a
/// session stays decoded between updates and is read again only once another connection has
/// committed. A bot that is the only process using its file can keep the file's locks
/// ([`with_locking`](Self::with_locking)): no statement then takes a lock, and a kept session
/// needs no check.
///
/// # Example
///
/// ```
/// use typed_session::store::Patch;
/// use typed_session::{SqliteStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// store.apply("7:7", &Patch::new().set_field("count", "1")).await?;
/// assert_eq!(store.load("7:7").await?.unwrap()["count"], "1");
/// # Ok::<(), typed_session::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    sql: Arc<Statements>,
    clock: Clock,
    busy_timeout: Duration,
    /// The transaction patches share, with group commit on; locked only under `connection`.
    group: Option<Arc<Mutex<Group>>>,
    /// The records the connection read and wrote, for [`Store::revision`]; one per
    /// connection, whatever the table; locked only under `connection`.
    revisions: Arc<Mutex<Revisions>>,
    /// The database is in memory: no other connection can open it.
    in_memory: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

/// The statements that do not depend on a patch's shape, written once per table.
struct Statements {
    table: Arc<str>,
    load: String,
    /// A patch that only renews the expiry of a live row.
    renew: String,
    delete: String,
    sweep: String,
    /// The patch statements written so far, by shape: a patch's text is built once per
    /// shape, not per patch (at most [`PATCH_SHAPES`] kept; any other is built each time).
    patches: Mutex<HashMap<Shape, Arc<str>, foldhash::fast::RandomState>>,
}

/// How many patch statements a store keeps written. A shape counts fields, not names, so
/// the middleware sends a handful (how many fields its updates write and read together, and
/// which of the values they write are integers); a caller of the `Store` API that sends more
/// shapes gets the others built per patch.
const PATCH_SHAPES: usize = 64;

/// What a patch statement's text depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    /// It may create the row: every version it expects is 0 ("never written").
    creates: bool,
    removed: usize,
    set: usize,
    expected: usize,
    /// It renews the expiry (a ttl is set).
    renews: bool,
    /// It writes the row's versions and writers whole, on the condition that they are the
    /// ones this connection knows (`creates` and `expected` are then 0).
    known: bool,
    /// With `known`: it writes `data` whole too, on the same condition (`removed`, `set` and
    /// `integers` are then 0).
    whole: bool,
    /// With `known`: the set values bound as SQL integers, by bit, of the first
    /// [`INTEGER_BITS`] ([`SetValue`]); the others go through `json(?)`.
    integers: u64,
}

/// A set value as bound to a `known` patch statement. A value whose JSON text is an integer
/// as SQLite writes one (`-12`, not `+12`, `012` or `1e2`) is bound as an integer, which
/// `json_set` stores as that same JSON number: no `json(?)` parses and writes it again. Any
/// other value is bound as its text, under `json(?)`.
#[derive(Debug, Clone, Copy)]
enum SetValue<'a> {
    Integer(i64),
    Json(&'a str),
}

/// How many set values a shape can mark as integers (the bits of [`Shape::integers`]); any
/// later one is bound as text.
const INTEGER_BITS: usize = 64;

impl<'a> SetValue<'a> {
    fn of(text: &'a str) -> Self {
        match text.parse::<i64>() {
            Ok(n) if itoa::Buffer::new().format(n) == text => SetValue::Integer(n),
            _ => SetValue::Json(text),
        }
    }

    /// The set values of a patch as bound, and which of them are integers, by bit.
    fn all(set: &'a [(&str, String)]) -> (Vec<Self>, u64) {
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
    fn patch(&self, shape: Shape) -> Arc<str> {
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

    fn new(table: Arc<str>) -> Self {
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
fn is_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

/// The statement that applies a patch of `shape` to `table`, with its `?` in the order
/// [`SqliteStore::apply_on`] binds them.
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
             WHERE {condition}"
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
             WHERE key = ? AND (expires_at IS NULL OR expires_at > ?) AND {condition}"
        )
    }
}

/// Takes the database's locks for good: exclusive locking mode, then a write transaction,
/// whose locks that mode keeps once it ends.
fn take_locks(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN IMMEDIATE; COMMIT;")
}

/// The connection as [`SqliteStore::connection`] lends it.
struct Lent<'a> {
    store: &'a SqliteStore,
    connection: parking_lot::MutexGuard<'a, Connection>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

impl Drop for Lent<'_> {
    /// Under [`Locking::Exclusive`], makes sure the locks are this connection's again: the
    /// application may have set another locking mode, or left a transaction open.
    fn drop(&mut self) {
        let mut revisions = self.store.revisions.lock();
        revisions.clear();
        if revisions.exclusive && !self.store.in_memory {
            revisions.private =
                self.connection.is_autocommit() && take_locks(&self.connection).is_ok();
        }
    }
}

fn error(op: StoreOp, key: &str, e: rusqlite::Error) -> StoreError {
    StoreError::backend(BACKEND, op, key, e)
}

impl SqliteStore {
    /// Opens `url`: `sqlite://path/to/file.db` or a plain path (created if missing; WAL
    /// journal, `synchronous=NORMAL`), or `sqlite::memory:`. A call that meets another
    /// connection's lock waits for it on a blocking thread, never on the async runtime, up to
    /// the busy timeout (5 s, [`with_busy_timeout`](Self::with_busy_timeout)).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let connection = if path == ":memory:" {
            Connection::open_in_memory()
        } else {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        }
        .map_err(|e| error(StoreOp::Connect, "", e))?;
        if path == ":memory:" {
            let mut store = Self::from_connection(connection);
            store.in_memory = true;
            store.revisions.lock().private = true;
            return Ok(store);
        }
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(|e| error(StoreOp::Connect, "", e))?;
        Ok(Self::from_connection(connection))
    }

    /// A store over a connection the application opened. Its busy timeout is set to none:
    /// the store never waits for a lock on the calling task, and waits at most
    /// [`with_busy_timeout`](Self::with_busy_timeout) on a blocking thread instead. Its
    /// prepared-statement cache is made large enough to hold the store's statements.
    pub fn from_connection(connection: Connection) -> Self {
        let _ = connection.busy_timeout(Duration::ZERO);
        // Room for every patch shape kept written beside the fixed statements, so that a bot
        // whose updates write varied sets of fields does not prepare them over and over.
        connection.set_prepared_statement_cache_capacity(PATCH_SHAPES + 16);
        SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            sql: Arc::new(Statements::new(Arc::from(DEFAULT_TABLE))),
            clock: Clock::system(),
            busy_timeout: Duration::from_secs(5),
            group: Some(Arc::default()),
            revisions: Arc::default(),
            in_memory: false,
        }
    }

    /// Whether the patches of concurrent updates share one transaction (group commit; on by
    /// default). A patch is written into the transaction open on the connection (the first
    /// one opens it, with `BEGIN IMMEDIATE`), its caller yields once so that the other updates
    /// ready to run can write theirs, and then the first caller back commits it for all.
    /// Every caller is answered only after that commit, with its outcome: nothing is
    /// acknowledged that is not committed, and what is committed is as durable as with a
    /// transaction per patch (WAL with `synchronous=NORMAL`: it survives a crash of the
    /// process, and a power loss may take back the last commits).
    ///
    /// It adapts: after a few groups of one patch in a row (one update at a time: nothing to
    /// share), patches commit on their own, with no yield and no explicit transaction, and a
    /// group is tried again every 32 patches. So one update at a time costs what a
    /// transaction per patch costs, and many in flight share commits (measured with 100 in
    /// flight: 1.65× the throughput of a transaction per patch).
    ///
    /// While a group transaction is open, this process holds the database's write lock:
    /// other processes' writes wait for it (within their busy timeout), never longer than
    /// the rest of the updates ready to run. A load of a key the open transaction wrote,
    /// any other call, and [`connection`](Self::connection) end it first. An update that is
    /// cancelled while waiting still has its patch committed with the others'.
    pub fn with_group_commit(mut self, on: bool) -> Self {
        self.group = on.then(Arc::default);
        self
    }

    /// What a commit waits for before it is acknowledged (default [`Durability::Normal`],
    /// what [`connect`](Self::connect) sets on a file): [`Durability::Full`] also survives an
    /// operating-system crash or a power loss, at the cost of a sync of the log per commit.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if SQLite refuses the setting.
    pub fn with_durability(self, durability: Durability) -> Result<Self, StoreError> {
        let pragma = match durability {
            Durability::Normal => "PRAGMA synchronous = NORMAL",
            Durability::Full => "PRAGMA synchronous = FULL",
        };
        self.connection()
            .execute_batch(pragma)
            .map_err(|e| error(StoreOp::Connect, "", e))?;
        Ok(self)
    }

    /// Which connections may use the database while this store has it open (default
    /// [`Locking::Normal`]). [`Locking::Exclusive`] takes the database's locks at once and
    /// keeps them: for a bot that is the only process using its file, each update then
    /// spares the system calls of SQLite's locking and the check of a session it kept
    /// decoded (BENCHMARKS.md, "SQLite: a session kept decoded, and the file's locks").
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the locks cannot be taken at once (another connection holds
    /// the database's write lock); the store then stays under [`Locking::Normal`].
    pub fn with_locking(self, locking: Locking) -> Result<Self, StoreError> {
        let mut connection = self.connection.lock();
        self.end_group(&mut connection, None);
        let mut revisions = self.revisions.lock();
        revisions.clear();
        revisions.private = false;
        revisions.exclusive = false;
        let taken = match locking {
            Locking::Normal => connection.execute_batch("PRAGMA locking_mode = NORMAL"),
            Locking::Exclusive => take_locks(&connection),
        };
        match taken {
            Ok(()) => {
                revisions.exclusive = locking == Locking::Exclusive;
                revisions.private = self.in_memory || revisions.exclusive;
            }
            Err(e) => {
                let _ = connection.execute_batch("PRAGMA locking_mode = NORMAL");
                revisions.private = self.in_memory;
                return Err(error(StoreOp::Connect, "", e));
            }
        }
        drop((revisions, connection));
        Ok(self)
    }

    /// How long a call waits for another connection's (or process's) lock on the database,
    /// on a blocking thread, before it fails (default 5 s).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Uses table `name` instead of `typed_sessions`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] when the name is not a plain identifier.
    pub fn with_table(mut self, name: &str) -> Result<Self, StoreError> {
        self.sql = Arc::new(Statements::new(table_name(BACKEND, name)?));
        Ok(self)
    }

    /// Reads the time from `now_ms` (milliseconds since the Unix epoch) instead of the system
    /// clock, so tests can move time.
    pub fn with_clock(mut self, now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Clock::custom(now_ms);
        self
    }

    /// The connection, locked: for queries of your own. Do not hold it across an `.await`, and
    /// mind that its busy timeout is none (a query meeting another connection's lock fails at
    /// once with `SQLITE_BUSY`).
    ///
    /// What is done through it is not counted among the records' revisions: sessions kept
    /// decoded are read again. Under [`Locking::Exclusive`] the locks are taken again when it
    /// is given back; if they cannot be, each session kept decoded is checked from then on,
    /// as under [`Locking::Normal`].
    pub fn connection(&self) -> impl std::ops::DerefMut<Target = Connection> + '_ {
        let mut connection = self.connection.lock();
        self.end_group(&mut connection, None);
        self.revisions.lock().clear();
        Lent {
            store: self,
            connection,
        }
    }

    /// Creates the table and its expiry index if they do not exist. The index holds only the
    /// rows that have an expiry, so that creating a session without one writes no page of it;
    /// a table made before (with an index of every row) has its index replaced.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.run(
            StoreOp::Migrate,
            "",
            |connection| self.migrate_on(connection),
            || Box::new(|store, connection| store.migrate_on(connection)),
        )
        .await
    }

    fn migrate_on(&self, connection: &mut Connection) -> Result<(), StoreError> {
        let t = &self.sql.table;
        // The sweep finds expired rows by the index; a row without an expiry is never in it.
        connection
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL, versions TEXT NOT NULL DEFAULT '{{}}', writers TEXT NOT NULL DEFAULT '{{}}', expires_at INTEGER); \
                 CREATE INDEX IF NOT EXISTS {t}_expiring ON {t} (expires_at) WHERE expires_at IS NOT NULL; \
                 DROP INDEX IF EXISTS {t}_expires_at;"
            ))
            .map_err(|e| error(StoreOp::Migrate, "", e))?;
        // Tables made before field versions and writers existed.
        for column in ["versions", "writers"] {
            let present: bool = connection
                .query_row(
                    &format!(
                        "SELECT count(*) FROM pragma_table_info('{t}') WHERE name = '{column}'"
                    ),
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(|e| error(StoreOp::Migrate, "", e))?;
            if !present {
                connection
                    .execute_batch(&format!(
                        "ALTER TABLE {t} ADD COLUMN {column} TEXT NOT NULL DEFAULT '{{}}'"
                    ))
                    .map_err(|e| error(StoreOp::Migrate, "", e))?;
            }
        }
        Ok(())
    }

    /// Deletes expired sessions; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let sweep = |store: &SqliteStore, connection: &mut Connection| {
            connection
                .prepare_cached(&store.sql.sweep)
                .and_then(|mut statement| statement.execute([store.clock.now_ms()]))
                .map(|removed| removed as u64)
                .map_err(|e| error(StoreOp::Sweep, "", e))
        };
        self.run(
            StoreOp::Sweep,
            "",
            |connection| sweep(self, connection),
            || Box::new(sweep),
        )
        .await
    }

    /// Runs [`sweep`](Self::sweep) every `every` on a tokio task.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        super::spawn_sweeper(BACKEND, every, move || {
            let store = store.clone();
            async move { store.sweep().await }
        })
    }

    fn keys_on(
        &self,
        connection: &Connection,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let t = &self.sql.table;
        let condition = range.condition("key", |n| format!("?{n}"));
        let sql = format!(
            "SELECT key FROM {t} WHERE {condition} AND (expires_at IS NULL OR expires_at > ?3) ORDER BY key LIMIT ?4"
        );
        let failed = |e| error(StoreOp::List, "", e);
        let mut statement = connection.prepare_cached(&sql).map_err(failed)?;
        let read = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        // An unbounded range does not name ?2; SQLite numbers parameters up to the highest.
        let rows = statement
            .query_map(
                (&range.from, range.to.as_deref(), self.clock.now_ms(), read),
                |row| row.get(0),
            )
            .map_err(failed)?;
        let keys = rows.collect::<Result<Vec<String>, _>>().map_err(failed)?;
        Ok(page_of(keys, limit))
    }

    /// Reads `key`'s live row. Read outside a transaction, it is also what the connection
    /// knows of the record from then on (its revision).
    fn load_on(&self, connection: &Connection, key: &str) -> Result<Option<Record>, StoreError> {
        // Inside a transaction the row holds what is committed unless the open group wrote
        // it (a patch not committed yet).
        let committed = connection.is_autocommit() || !self.group_wrote(key);
        let mut revisions = self.revisions.lock();
        let follow = committed && revisions.current(connection);
        let row: Option<(String, String, String, Option<i64>)> = connection
            .prepare_cached(&self.sql.load)
            .and_then(|mut statement| {
                statement
                    .query_row((key, self.clock.now_ms()), |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .optional()
            })
            .map_err(|e| error(StoreOp::Load, key, e))?;
        let Some((data, versions, writers, expires_at)) = row else {
            if follow {
                revisions.read(key, None);
            }
            return Ok(None);
        };
        let mut record = parse_record(BACKEND, key, &data)?;
        record.versions = parse_versions(BACKEND, key, &versions)?;
        record.writers = parse_writers(BACKEND, key, &writers)?;
        if follow {
            // Versions beyond `i64` are never written (a patch refuses them), nor kept.
            let counts: Option<Vec<(&str, i64)>> = record
                .versions
                .iter()
                .map(|(field, version)| Some((field.as_str(), i64::try_from(*version).ok()?)))
                .collect();
            let columns = counts
                .and_then(|counts| Object::new(versions, counts))
                .zip(Object::new(
                    writers,
                    record.writers.iter().map(|(name, id)| (name.as_str(), *id)),
                ))
                .map(|(versions, writers)| Columns {
                    versions,
                    writers,
                    data: Object::new(
                        data,
                        (record.fields.iter())
                            .map(|(name, value)| (name.as_str(), Box::from(&**value))),
                    ),
                });
            revisions.read(key, Some((expires_at, columns)));
        }
        Ok(Some(record))
    }

    /// Applies `patch` ([`write_on`](Self::write_on)) and counts it among the record's
    /// revisions: at once, or when the group transaction it was written in commits. A patch
    /// that failed leaves the record's revision unknown.
    fn apply_on(
        &self,
        connection: &mut Connection,
        key: &str,
        patch: &Patch<'_>,
    ) -> Result<(), StoreError> {
        let written = self.write_on(connection, key, patch);
        let mut revisions = self.revisions.lock();
        match written {
            Ok(Some((expiry, columns_kept))) => {
                // Read after the statement's own clock: a row it found live is not taken
                // for expired, nor the other way.
                let pending = !connection.is_autocommit();
                revisions.wrote(key, self.clock.now_ms(), expiry, pending, columns_kept);
                Ok(())
            }
            written => {
                revisions.forget(key);
                written.map(|_| ())
            }
        }
    }

    /// One patch in one statement: the versions it expects are its condition, checked on the
    /// row as the statement writes it (SQLite runs one writer at a time), and the new versions
    /// of the fields it writes (one more than expected) are merged into the row's. A patch
    /// that expects every field never written may create the row; one that expects a field
    /// must find it live. Returns what became of the row's expiry, if it changed the row, and
    /// whether the row's columns are the ones kept beside its revision.
    fn write_on(
        &self,
        connection: &mut Connection,
        key: &str,
        patch: &Patch<'_>,
    ) -> Result<Option<(Expiry, bool)>, StoreError> {
        if patch.only_renews() {
            let Some(expires_at) = self.clock.expiry(patch.ttl) else {
                return Ok(None);
            };
            let now = self.clock.now_ms();
            let renewed = connection
                .prepare_cached(&self.sql.renew)
                .and_then(|mut statement| statement.execute((key, expires_at, now)))
                .map_err(|e| error(StoreOp::Apply, key, e))?;
            return Ok((renewed > 0).then_some((Expiry::Set(expires_at), true)));
        }
        for name in patch
            .remove
            .iter()
            .chain(patch.set.iter().map(|(name, _)| name))
        {
            check_name(BACKEND, key, name)?;
        }
        let mut expected = Vec::with_capacity(patch.expect.len());
        // The fields written, with their new versions.
        let mut bumped = Vec::with_capacity(patch.expect.len());
        for (field, version) in &patch.expect {
            let beyond = || StoreError::Malformed {
                backend: BACKEND,
                key: key.to_owned(),
                field: (*field).to_owned(),
                message: "a version beyond i64".to_owned(),
            };
            let version = i64::try_from(*version).map_err(|_| beyond())?;
            expected.push((*field, version));
            // A field only read is a condition, not a write: its version stays.
            if patch.written_fields().any(|written| written == *field) {
                bumped.push((*field, version.checked_add(1).ok_or_else(beyond)?));
            }
        }
        if patch
            .written_fields()
            .any(|field| !bumped.iter().any(|(name, _)| *name == field))
        {
            // A write that expects nothing of a field (an admin's, not the middleware's):
            // its version is read and bumped in a transaction.
            let (removed, set) = patch_paths(BACKEND, key, patch)?;
            let expiry = self.apply_unconditionally(connection, key, patch, &removed, &set)?;
            return Ok(expiry.map(|expiry| (expiry, false)));
        }
        let now = self.clock.now_ms();
        let expires_at = self.clock.expiry(patch.ttl);
        let expiry = expires_at.map_or(Expiry::Kept, Expiry::Set);
        {
            let mut revisions = self.revisions.lock();
            if let Some(columns) = revisions.columns_mut(key, now)
                && expected.iter().all(|(field, version)| {
                    columns.versions.get(field).copied().unwrap_or(0) == *version
                })
            {
                let clock = (now, expires_at);
                if let Some(kept) =
                    self.write_known(connection, key, patch, columns, &bumped, clock)?
                {
                    return Ok(Some((expiry, kept)));
                }
                // Another connection wrote the row: the statement below checks the fields.
            }
        }
        let (removed, set) = patch_paths(BACKEND, key, patch)?;
        let set_pairs = || {
            set.iter()
                .zip(&patch.set)
                .flat_map(|(path, (_, value))| [path as &dyn ToSql, value as &dyn ToSql])
        };
        let expected = expected
            .into_iter()
            .map(|(field, version)| Ok((json_path(BACKEND, key, field)?, version)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let creates = expected.iter().all(|(_, v)| *v == 0);
        let sql = self.sql.patch(Shape {
            creates,
            removed: patch.remove.len(),
            set: patch.set.len(),
            expected: expected.len(),
            renews: expires_at.is_some(),
            known: false,
            whole: false,
            integers: 0,
        });
        let bumped = integer_object(&bumped);
        let writers = writers_object(patch);
        let changed = if creates {
            // Bound in the order the `?` stand in the statement, by reference.
            let mut params: Vec<&dyn ToSql> = vec![&key];
            params.extend(set_pairs());
            params.extend([&bumped as &dyn ToSql, &writers, &expires_at, &now]);
            params.extend(removed.iter().map(|path| path as &dyn ToSql));
            params.extend(set_pairs());
            params.extend([&now as &dyn ToSql, &bumped, &now, &writers, &now]);
            for (path, version) in &expected {
                params.extend([&now as &dyn ToSql, path, version]);
            }
            execute(connection, key, &sql, params)?
        } else {
            let mut params: Vec<&dyn ToSql> =
                removed.iter().map(|path| path as &dyn ToSql).collect();
            params.extend(set_pairs());
            params.extend([&bumped as &dyn ToSql, &writers]);
            if expires_at.is_some() {
                params.push(&expires_at);
            }
            params.extend([&key as &dyn ToSql, &now]);
            for (path, version) in &expected {
                params.extend([path as &dyn ToSql, version]);
            }
            execute(connection, key, &sql, params)?
        };
        if changed > 0 {
            return Ok(Some((expiry, false)));
        }
        let current = self.load_on(connection, key)?.unwrap_or_default();
        Err(conflict(BACKEND, key, patch, current))
    }

    /// A patch of a row whose columns this connection keeps, conditional on the row's columns
    /// being those: they are written whole, `data` too when it is kept (SQLite then parses no
    /// JSON), else edited by `json_set`. Returns, if the row was the one kept, whether its
    /// columns still are once the patch is written ([`Revisions::wrote`]); `None` if another
    /// connection wrote it since.
    fn write_known(
        &self,
        connection: &Connection,
        key: &str,
        patch: &Patch<'_>,
        columns: &mut Columns,
        bumped: &[(&str, i64)],
        (now, expires_at): (i64, Option<i64>),
    ) -> Result<Option<bool>, StoreError> {
        let shape = Shape {
            creates: false,
            removed: patch.remove.len(),
            set: patch.set.len(),
            expected: 0,
            renews: expires_at.is_some(),
            known: true,
            whole: false,
            integers: 0,
        };
        let versions = columns.versions.merged_text(bumped, &[]);
        let writers = columns.writers.merged_text(&patch.writers, &[]);
        // A value that is not JSON is refused by `json(?)` below, as on every other path.
        let whole = (columns.data.as_ref())
            .filter(|_| patch.set.iter().all(|(_, value)| is_json(value)))
            .map(|data| (data.merged_text(&patch.set, &patch.remove), &*data.text));
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(9 + 2 * patch.set.len());
        let written = if let Some((data, kept)) = &whole {
            params.extend([data as &dyn ToSql, &versions, &writers]);
            if expires_at.is_some() {
                params.push(&expires_at);
            }
            params.extend([
                &key as &dyn ToSql,
                kept,
                &columns.versions.text,
                &columns.writers.text,
                &now,
            ]);
            let shape = Shape {
                whole: true,
                removed: 0,
                set: 0,
                ..shape
            };
            execute(connection, key, &self.sql.patch(shape), params)?
        } else {
            let (removed, set) = patch_paths(BACKEND, key, patch)?;
            let (values, integers) = SetValue::all(&patch.set);
            params.extend(removed.iter().map(|path| path as &dyn ToSql));
            for (path, value) in set.iter().zip(&values) {
                params.extend([path as &dyn ToSql, value]);
            }
            params.extend([&versions as &dyn ToSql, &writers]);
            if expires_at.is_some() {
                params.push(&expires_at);
            }
            params.extend([
                &key as &dyn ToSql,
                &columns.versions.text,
                &columns.writers.text,
                &now,
            ]);
            execute(
                connection,
                key,
                &self.sql.patch(Shape { integers, ..shape }),
                params,
            )?
        };
        if written == 0 {
            return Ok(None);
        }
        // The data kept stays so only if this patch wrote it whole, and it is still short.
        let data = whole.map(|(data, _)| data);
        let data_kept = match (columns.data.as_mut(), data) {
            (Some(kept), Some(text)) => kept.merge(&patch.set, &patch.remove, text),
            _ => false,
        };
        if !data_kept {
            columns.data = None;
        }
        Ok(Some(
            columns.versions.merge(bumped, &[], versions)
                & columns.writers.merge(&patch.writers, &[], writers),
        ))
    }

    /// A patch with fields it expects nothing of, in one immediate transaction: the versions
    /// are read and bumped, then the row is written. The write lock is taken at `BEGIN`, so no
    /// other connection or process writes the row between the two.
    fn apply_unconditionally(
        &self,
        connection: &mut Connection,
        key: &str,
        patch: &Patch<'_>,
        removed: &[String],
        set: &[String],
    ) -> Result<Option<Expiry>, StoreError> {
        self.end_group(connection, None);
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| error(StoreOp::Apply, key, e))?;
        let now = self.clock.now_ms();
        let current = self.load_on(&tx, key)?.unwrap_or_default();
        if patch
            .expect
            .iter()
            .any(|(field, version)| current.version(field) != *version)
        {
            return Err(conflict(BACKEND, key, patch, current));
        }
        let mut versions = current.versions;
        for field in patch.written_fields() {
            *versions.entry(field.to_owned()).or_insert(0) += 1;
        }
        let versions = serde_json::to_string(&versions).unwrap_or_else(|_| "{}".to_owned());
        let writers = writers_object(patch);

        let t = &self.sql.table;
        let insert = edit_expression("'{}'", 0, patch.set.len(), "json(?)");
        let current =
            "(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{}' ELSE data END)";
        let update = edit_expression(current, patch.remove.len(), patch.set.len(), "json(?)");
        let sql = format!(
            "INSERT INTO {t} (key, data, versions, writers, expires_at) VALUES (?, {insert}, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET data = {update}, versions = excluded.versions, \
             writers = json_patch(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{{}}' ELSE writers END, ?), \
             expires_at = COALESCE(excluded.expires_at, CASE WHEN expires_at <= ? THEN NULL ELSE expires_at END)"
        );
        let expires_at = self.clock.expiry(patch.ttl);
        let set_pairs = || {
            set.iter()
                .zip(&patch.set)
                .flat_map(|(path, (_, value))| [path as &dyn ToSql, value as &dyn ToSql])
        };
        let params: Vec<&dyn ToSql> = std::iter::once(&key as &dyn ToSql)
            .chain(set_pairs())
            .chain([&versions as &dyn ToSql, &writers, &expires_at, &now])
            .chain(removed.iter().map(|path| path as &dyn ToSql))
            .chain(set_pairs())
            .chain([&now as &dyn ToSql, &writers, &now])
            .collect();
        tx.prepare_cached(&sql)
            .and_then(|mut statement| statement.execute(params_from_iter(params)))
            .map_err(|e| error(StoreOp::Apply, key, e))?;
        tx.commit().map_err(|e| error(StoreOp::Apply, key, e))?;
        Ok(Some(expires_at.map_or(Expiry::Kept, Expiry::Set)))
    }
}

fn execute(
    connection: &Connection,
    key: &str,
    sql: &str,
    params: Vec<&dyn ToSql>,
) -> Result<usize, StoreError> {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute(params_from_iter(params)))
        .map_err(|e| error(StoreOp::Apply, key, e))
}

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

impl Store for SqliteStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        self.run(
            StoreOp::Load,
            key,
            |connection| self.load_on(connection, key),
            || {
                let key = key.to_owned();
                Box::new(move |store, connection| store.load_on(connection, &key))
            },
        )
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        if let Err(error) = crate::store::check_size(BACKEND, patch) {
            return StoreFuture::ready(Err(error));
        }
        if let Some(group) = &self.group
            && let Some(mut connection) = self.connection.try_lock()
        {
            if group.lock().goes_alone() {
                match self.apply_on(&mut connection, key, patch) {
                    Err(error) if is_busy(&error) => {}
                    done => return StoreFuture::ready(done),
                }
            } else {
                match self.apply_grouped_on(&mut connection, group, key, patch) {
                    Ok(Some(batch)) => {
                        drop(connection);
                        let member = Member { store: self, batch };
                        return StoreFuture::new(member.outcome(key));
                    }
                    Ok(None) => return StoreFuture::ready(Ok(())),
                    Err(error) if is_busy(&error) => {}
                    Err(error) => return StoreFuture::ready(Err(error)),
                }
            }
        }
        self.run(
            StoreOp::Apply,
            key,
            |connection| self.apply_on(connection, key, patch),
            || {
                let (key, patch) = (key.to_owned(), OwnedPatch::new(patch));
                Box::new(move |store, connection| store.apply_on(connection, &key, &patch.patch()))
            },
        )
    }

    /// One indexed range query on the primary key per page, in key order.
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        let Some(range) = KeyRange::new(prefix, cursor) else {
            return StoreFuture::ready(Ok(Page::default()));
        };
        self.run(
            StoreOp::List,
            "",
            |connection| self.keys_on(connection, &range, limit),
            || {
                let range = range.clone();
                Box::new(move |store, connection| store.keys_on(connection, &range, limit))
            },
        )
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        let delete = |store: &SqliteStore, connection: &mut Connection, key: &str| {
            let deleted = connection
                .prepare_cached(&store.sql.delete)
                .and_then(|mut statement| statement.execute([key]))
                .map(|_| ())
                .map_err(|e| error(StoreOp::Delete, key, e));
            let mut revisions = store.revisions.lock();
            if deleted.is_ok() && connection.is_autocommit() {
                revisions.deleted(key);
            } else {
                revisions.forget(key);
            }
            deleted
        };
        self.run(
            StoreOp::Delete,
            key,
            |connection| delete(self, connection, key),
            || {
                let key = key.to_owned();
                Box::new(move |store, connection| delete(store, connection, &key))
            },
        )
    }

    /// Told while no other connection has committed since this one last looked (`PRAGMA
    /// data_version`, read from the database's shared memory, no lock wait): the records
    /// this connection read or wrote since. Unknown while the connection is busy, and for a
    /// record not read since another connection's commit.
    fn revision(&self, key: &str) -> Revision {
        let Some(connection) = self.connection.try_lock() else {
            return Revision::Unknown;
        };
        let mut revisions = self.revisions.lock();
        // Unknown whatever the check says: no need to make it.
        if !revisions.knows(key) || !revisions.current(&connection) {
            return Revision::Unknown;
        }
        revisions.revision(key, || self.clock.now_ms())
    }

    /// What the connection counted at the apply's commit, without asking the database again:
    /// a commit of another connection before the apply shows at the next
    /// [`revision`](Store::revision), which forgets everything counted since.
    fn applied_revision(&self, key: &str) -> Revision {
        self.revisions.lock().revision(key, || self.clock.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row's `versions` and `writers` columns, as another connection reads them.
    fn columns_of(path: &std::path::Path, key: &str) -> Kept {
        Connection::open(path)
            .and_then(|connection| {
                connection.query_row(
                    "SELECT data, versions, writers FROM typed_sessions WHERE key = ?1",
                    [key],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
            })
            .expect("the row")
    }

    /// A row's `data` (`None`: not kept), `versions` and `writers`.
    type Kept = (Option<String>, String, String);

    /// The columns kept beside `key`'s revision, if any.
    fn kept(store: &SqliteStore, key: &str) -> Option<Kept> {
        let now = store.clock.now_ms();
        let mut revisions = store.revisions.lock();
        let columns = revisions.columns_mut(key, now)?;
        Some((
            columns.data.as_ref().map(|data| data.text.clone()),
            columns.versions.text.clone(),
            columns.writers.text.clone(),
        ))
    }

    #[tokio::test]
    async fn the_expiry_index_holds_only_rows_with_an_expiry_and_the_sweep_uses_it() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        // A table as an earlier version made it: an index of every row's expiry.
        store
            .connection()
            .execute_batch(
                "CREATE TABLE typed_sessions (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL, expires_at INTEGER); \
                 CREATE INDEX typed_sessions_expires_at ON typed_sessions (expires_at);",
            )
            .expect("an old table");
        store.migrate().await.expect("migrate");
        store.migrate().await.expect("migrate again");
        let connection = store.connection();
        let indexes: Vec<(String, String)> = connection
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .expect("the indexes");
        assert_eq!(indexes.len(), 1, "{indexes:?}");
        assert_eq!(indexes[0].0, "typed_sessions_expiring");
        assert!(
            indexes[0].1.ends_with("WHERE expires_at IS NOT NULL"),
            "{indexes:?}"
        );
        let plan: Vec<String> = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {}", store.sql.sweep))
            .and_then(|mut statement| statement.query_map([0], |row| row.get(3))?.collect())
            .expect("the sweep's plan");
        assert!(
            plan.iter()
                .any(|step| step.contains("typed_sessions_expiring")),
            "{plan:?}"
        );
    }

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

    #[tokio::test]
    async fn values_written_whole_read_back_as_sent() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        let values = [
            ("a", "0"),
            ("b", "-7"),
            ("c", "9223372036854775807"),
            ("d", "18446744073709551615"),
            ("e", "1.5"),
            ("f", "\"012\""),
            ("g", "null"),
            ("h", "[1,{\"x\":2}]"),
        ];
        let mut create = Patch::new();
        for (field, _) in values {
            create = create.set_field(field, "1").expect_version(field, 0);
        }
        store.apply("k", &create).await.expect("create");
        store.load("k").await.expect("load");
        assert!(
            kept(&store, "k").is_some(),
            "known: the next patch is written whole"
        );
        let mut patch = Patch::new();
        for (field, value) in values {
            patch = patch.set_field(field, value).expect_version(field, 1);
        }
        store.apply("k", &patch).await.expect("written whole");
        assert!(kept(&store, "k").is_some(), "went the known way");
        let record = store.load("k").await.expect("load").expect("a row");
        for (field, value) in values {
            assert_eq!(
                (record[field].as_str(), record.version(field)),
                (value, 2),
                "{field}"
            );
        }
    }

    #[tokio::test]
    async fn the_columns_kept_are_the_rows_and_a_write_by_another_connection_is_merged_by_field() {
        let path = std::env::temp_dir().join(format!(
            "typed-session-kept-columns-{}.db",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let url = format!("sqlite://{}", path.display());
        let one = SqliteStore::connect(&url).await.expect("open");
        one.migrate().await.expect("migrate");
        let two = SqliteStore::connect(&url).await.expect("open again");
        let write = |field: &'static str, value: &'static str, version: u64, id: i64| {
            Patch::new()
                .set_field(field, value)
                .expect_version(field, version)
                .written_by(field, id)
        };

        one.apply("k", &write("a", "1", 0, 1))
            .await
            .expect("create");
        assert_eq!(kept(&one, "k"), None, "created by the statement: not known");
        one.load("k").await.expect("load");
        assert_eq!(kept(&one, "k"), Some(columns_of(&path, "k")), "as read");
        one.apply("k", &write("a", "2", 1, 2)).await.expect("write");
        assert_eq!(kept(&one, "k"), Some(columns_of(&path, "k")), "as written");

        // Another connection writes another field: the row's columns are no longer the kept
        // ones, and the next patch is decided field by field.
        two.apply("k", &write("b", "1", 0, 3))
            .await
            .expect("another field");
        one.apply("k", &write("a", "3", 2, 4))
            .await
            .expect("not a conflict: a was not written by the other");
        let record = one.load("k").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record["b"].as_str()), ("3", "1"));
        assert_eq!((record.version("a"), record.version("b")), (3, 1));
        assert_eq!((record.writers["a"], record.writers["b"]), (4, 3));
        assert_eq!(kept(&one, "k"), Some(columns_of(&path, "k")), "read again");

        // A patch that expects what the kept columns do not hold is refused, as any other.
        let refused = one.apply("k", &write("a", "x", 2, 5)).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict { .. })),
            "{refused:?}"
        );
        let record = one.load("k").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record.version("a")), ("3", 3));

        // The same field written by the other connection meanwhile: refused too.
        two.apply("k", &write("a", "4", 3, 6))
            .await
            .expect("the other writes a");
        let stale = one.apply("k", &write("a", "5", 3, 7)).await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{stale:?}"
        );
        let record = one.load("k").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record.version("a")), ("4", 4));

        // Written whole from what is kept: a new field and a removal, then the removed field
        // set again; the row is what the kept columns say, as another connection reads it.
        one.apply("m", &write("a", "1", 0, 1))
            .await
            .expect("create");
        one.load("m").await.expect("load");
        one.apply("m", &write("a", "2", 1, 2))
            .await
            .expect("written");
        let edit = Patch::new()
            .set_field("c", r#"{"x":[1,"é"]}"#)
            .expect_version("c", 0)
            .written_by("c", 2);
        one.apply("m", &edit).await.expect("a new field");
        assert_eq!(kept(&one, "m"), Some(columns_of(&path, "m")), "added");
        let removal = Patch::new().remove_field("c").expect_version("c", 1);
        one.apply("m", &removal).await.expect("a removal");
        assert_eq!(kept(&one, "m"), Some(columns_of(&path, "m")), "removed");
        one.apply("m", &write("c", "true", 2, 2))
            .await
            .expect("set again");
        assert_eq!(kept(&one, "m"), Some(columns_of(&path, "m")), "set again");
        let record = two.load("m").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record["c"].as_str()), ("2", "true"));
        assert_eq!((record.version("a"), record.version("c")), (2, 3));

        // A value that is not JSON is refused, as on every path, and nothing is written.
        let refused = one.apply("m", &write("a", "{not json", 2, 2)).await;
        assert!(refused.is_err(), "{refused:?}");
        let record = two.load("m").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record.version("a")), ("2", 2));

        // Data grown past what is kept: versions and writers are still written whole, data is
        // edited by the statement, and the row holds every field.
        let long = format!("\"{}\"", "l".repeat(3000));
        one.load("m").await.expect("load");
        let grown = Patch::new()
            .set_field("long", long.as_str())
            .expect_version("long", 0)
            .written_by("long", 2);
        one.apply("m", &grown).await.expect("a long value");
        let (data, versions, writers) = columns_of(&path, "m");
        assert_eq!(
            kept(&one, "m"),
            Some((None, versions, writers)),
            "data not kept"
        );
        one.apply("m", &write("a", "7", 2, 2))
            .await
            .expect("edited");
        let record = two.load("m").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record.version("a")), ("7", 3));
        assert_eq!(record["long"], long);
        assert!(data.is_some_and(|data| data.contains(&long)));
        two.apply(
            "m",
            &Patch::new().remove_field("long").expect_version("long", 1),
        )
        .await
        .expect("the long value removed");
        one.apply("m", &write("a", "8", 3, 2))
            .await
            .expect("not a conflict: the other removed another field");
        let record = two.load("m").await.expect("load").expect("a row");
        assert_eq!((record["a"].as_str(), record.version("a")), ("8", 4));
        assert!(!record.fields.contains_key("long"), "{record:?}");
        drop((one, two));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
