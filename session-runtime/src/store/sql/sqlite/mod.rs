//! [`SqliteStore`]: sessions in an embedded SQLite database (feature `sqlite`).
//!
//! The store is here; `statements` writes its SQL (a patch's once per shape), `patch` writes a
//! patch with it, `revisions` keeps what the connection last read and wrote, `group` shares
//! one transaction among the patches of updates in flight together, and `blocking` runs a call
//! on the calling task or, when it would wait, on a blocking thread.

mod blocking;
mod group;
mod patch;
mod revisions;
mod statements;

use blocking::{OwnedPatch, is_busy};
use group::{Group, Member};
use revisions::{Columns, Revisions};
use statements::{PATCH_SHAPES, Statements};

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{
    Clock, DEFAULT_TABLE, KeyRange, parse_record, parse_versions, parse_writers, table_name,
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
        self.load_known_on(connection, key)
            .map(|(record, _)| record)
    }

    /// [`load_on`](Self::load_on), and the revision of the row read: what the connection
    /// records of it, told under the same lock (unknown for a row an open group wrote).
    fn load_known_on(
        &self,
        connection: &Connection,
        key: &str,
    ) -> Result<(Option<Record>, Revision), StoreError> {
        // Inside a transaction the row holds what is committed unless the open group wrote
        // it (a patch not committed yet).
        let committed = connection.is_autocommit() || !self.group_wrote(key);
        let mut revisions = self.revisions.lock();
        let follow = committed && revisions.current(connection);
        // One instant for the read and the revision told: a row the read found live is not
        // told expired.
        let now = self.clock.now_ms();
        let row: Option<(String, String, String, Option<i64>)> = connection
            .prepare_cached(&self.sql.load)
            .and_then(|mut statement| {
                statement
                    .query_row((key, now), |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .optional()
            })
            .map_err(|e| error(StoreOp::Load, key, e))?;
        let Some((data, versions, writers, expires_at)) = row else {
            if !follow {
                return Ok((None, Revision::Unknown));
            }
            revisions.read(key, None);
            return Ok((None, revisions.revision(key, || now)));
        };
        let mut record = parse_record(BACKEND, key, &data)?;
        record.versions = parse_versions(BACKEND, key, &versions)?;
        record.writers = parse_writers(BACKEND, key, &writers)?;
        if !follow {
            return Ok((Some(record), Revision::Unknown));
        }
        let columns = Columns::of_row(data, versions, writers, &record);
        revisions.read(key, Some((expires_at, columns)));
        Ok((Some(record), revisions.revision(key, || now)))
    }
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

    /// The revision is what the connection records of the row as it reads it, under its
    /// lock: a key's first read tells it, where asking before and after could not (the
    /// revision of a key never read is unknown).
    fn load_with_revision<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<(Option<Record>, Revision), StoreError>> {
        self.run(
            StoreOp::Load,
            key,
            |connection| self.load_known_on(connection, key),
            || {
                let key = key.to_owned();
                Box::new(move |store, connection| store.load_known_on(connection, &key))
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
        assert_eq!(kept(&one, "k"), None, "created, never read: not known");
        // Read first (no row), then created: the statement returns the row it made.
        assert!(one.load("n").await.expect("load").is_none());
        one.apply("n", &write("a", "1", 0, 1))
            .await
            .expect("create");
        assert_eq!(kept(&one, "n"), Some(columns_of(&path, "n")), "as created");
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
        assert_eq!(
            kept(&one, "k"),
            Some(columns_of(&path, "k")),
            "as the statement that merged it field by field returned it"
        );
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
