//! [`MySqlStore`]: sessions in MySQL or MariaDB (feature `mysql`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};

use super::{
    Clock, DEFAULT_TABLE, SqlOptions, conflict, db_error, edit_expression, json_path, key_hash,
    parse_record, parse_versions, parse_writers, patch_paths, table_name, writers_object,
};
use crate::error::{StoreError, StoreOp};
use crate::store::{Cursor, Page, Patch, Record, Store, StoreFuture, listed_key, within};

const BACKEND: &str = "mysql";

/// Sessions in MySQL 8 or MariaDB 10.5+.
///
/// Table (`typed_sessions` unless [`with_table`](Self::with_table)):
///
/// ```sql
/// CREATE TABLE typed_sessions (
///     key_hash BINARY(32) NOT NULL PRIMARY KEY,  -- SHA-256 of the key: any length indexes
///     session_key LONGTEXT NOT NULL,
///     data LONGTEXT NOT NULL,                    -- {"count": 3, "lang": "de"}
///     expires_at BIGINT NULL,                    -- ms since the Unix epoch
///     INDEX typed_sessions_expires_at (expires_at)
/// ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
/// ```
///
/// `data` is text holding a JSON object rather than MySQL's `JSON` type, because MariaDB has
/// no binary JSON type; both servers' `JSON_SET`/`JSON_REMOVE` work on it. A patch is one
/// `INSERT .. ON DUPLICATE KEY UPDATE data = JSON_SET(JSON_REMOVE(data, ..), ..)`.
///
/// # Example
///
/// ```no_run
/// use typed_session::MySqlStore;
///
/// # async fn run() -> Result<(), typed_session::StoreError> {
/// let store = MySqlStore::connect("mysql://root@127.0.0.1:3306/test").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    sql: Arc<Statements>,
    clock: Clock,
    /// The client's own bound on a call (twice the server-side deadline): a connection that
    /// died without a word does not hold an update forever.
    deadline: Duration,
}

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlStore")
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
}

impl Statements {
    fn new(table: Arc<str>) -> Self {
        let t = &table;
        Statements {
            load: format!(
                "SELECT data, versions, writers FROM {t} WHERE key_hash = ? AND (expires_at IS NULL OR expires_at > ?)"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = ? WHERE key_hash = ? AND (expires_at IS NULL OR expires_at > ?)"
            ),
            delete: format!("DELETE FROM {t} WHERE key_hash = ?"),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?"),
            table,
        }
    }
}

impl MySqlStore {
    /// Connects to `url` (`mysql://user:password@host:port/database`) with a pool of its own,
    /// of the default size and deadlines ([`SqlOptions`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// [`connect`](Self::connect) with another pool size and deadline. The row-lock wait is
    /// `innodb_lock_wait_timeout`, which counts whole seconds: the deadline rounded up.
    pub async fn connect_with(url: &str, options: SqlOptions) -> Result<Self, StoreError> {
        let error = |e| db_error(BACKEND, StoreOp::Connect, "", e);
        let connect: MySqlConnectOptions = url.parse().map_err(error)?;
        let seconds = options.timeout.as_secs() + u64::from(options.timeout.subsec_nanos() > 0);
        let set = format!("SET SESSION innodb_lock_wait_timeout = {}", seconds.max(1));
        let pool = options
            .pool()
            .after_connect(move |connection, _| {
                let set = set.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(connection, set.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(connect)
            .await
            .map_err(error)?;
        let mut store = Self::from_pool(pool);
        store.deadline = options.client_deadline();
        Ok(store)
    }

    /// A store over an existing pool, used as it is: its own settings, such as sqlx's
    /// default ping of every connection it hands out (a second round trip per call, which the
    /// pools this store builds make only after a connection idled: see [`SqlOptions`]).
    pub fn from_pool(pool: MySqlPool) -> Self {
        MySqlStore {
            pool,
            sql: Arc::new(Statements::new(Arc::from(DEFAULT_TABLE))),
            clock: Clock::system(),
            deadline: SqlOptions::default().client_deadline(),
        }
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

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Creates the table (with its expiry index) if it does not exist.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let t = &self.sql.table;
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (key_hash BINARY(32) NOT NULL PRIMARY KEY, session_key LONGTEXT NOT NULL, \
             data LONGTEXT NOT NULL, versions LONGTEXT NOT NULL DEFAULT ('{{}}'), \
             writers LONGTEXT NOT NULL DEFAULT ('{{}}'), expires_at BIGINT NULL, \
             INDEX {t}_expires_at (expires_at)) \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        );
        let error = |e| db_error(BACKEND, StoreOp::Migrate, "", e);
        sqlx::query(&sql).execute(&self.pool).await.map_err(error)?;
        // Tables made before field versions and writers existed (MySQL has no ADD COLUMN IF
        // NOT EXISTS).
        for (column, after) in [("versions", "data"), ("writers", "versions")] {
            let present: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            )
            .bind(&**t)
            .bind(column)
            .fetch_one(&self.pool)
            .await
            .map_err(error)?;
            if present == 0 {
                sqlx::query(&format!(
                    "ALTER TABLE {t} ADD COLUMN {column} LONGTEXT NOT NULL DEFAULT ('{{}}') AFTER {after}"
                ))
                .execute(&self.pool)
                .await
                .map_err(error)?;
            }
        }
        Ok(())
    }

    /// Deletes expired sessions; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(&self.sql.sweep)
            .bind(self.clock.now_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(BACKEND, StoreOp::Sweep, "", e))?;
        Ok(done.rows_affected())
    }

    /// Runs [`sweep`](Self::sweep) every `every` on a tokio task.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        super::spawn_sweeper(BACKEND, every, move || {
            let store = store.clone();
            async move { store.sweep().await }
        })
    }

    /// The statement that creates a record: the patch expects none of its fields to exist.
    fn insert_sql(&self, patch: &Patch<'_>) -> String {
        let t = &self.sql.table;
        let data = edit_expression("'{}'", 0, patch.set.len(), "JSON_EXTRACT(?, '$')");
        let versions = edit_expression("'{}'", 0, written(patch), "1");
        format!(
            "INSERT INTO {t} (key_hash, session_key, data, versions, writers, expires_at) \
             VALUES (?, ?, {data}, {versions}, ?, ?)"
        )
    }

    /// The statement that patches a record whose expected versions are the stored ones. An
    /// expired row counts as empty. MySQL evaluates the assignments in order: `data` and
    /// `versions` must still see the old `expires_at`, so it comes last.
    fn update_sql(&self, patch: &Patch<'_>) -> String {
        let t = &self.sql.table;
        let data = "IF(expires_at IS NOT NULL AND expires_at <= ?, '{}', data)";
        let versions = "IF(expires_at IS NOT NULL AND expires_at <= ?, '{}', versions)";
        let new_data = edit_expression(
            data,
            patch.remove.len(),
            patch.set.len(),
            "JSON_EXTRACT(?, '$')",
        );
        let bumped = format!("COALESCE(JSON_EXTRACT({versions}, ?), 0) + 1");
        let new_versions = edit_expression(versions, 0, written(patch), &bumped);
        let mut expected = String::from("1");
        for _ in &patch.expect {
            expected.push_str(&format!(
                " AND COALESCE(JSON_EXTRACT({versions}, ?), 0) = ?"
            ));
        }
        let writers = "IF(expires_at IS NOT NULL AND expires_at <= ?, '{}', writers)";
        format!(
            "UPDATE {t} SET data = {new_data}, versions = {new_versions}, \
             writers = JSON_MERGE_PATCH({writers}, ?), \
             expires_at = COALESCE(?, IF(expires_at <= ?, NULL, expires_at)) \
             WHERE key_hash = ? AND {expected}"
        )
    }

    /// Patches the record if the versions are as expected; `false` when no row matched.
    async fn update(&self, key: &str, patch: &Patch<'_>, now: i64) -> Result<bool, StoreError> {
        let (removed, set) = patch_paths(BACKEND, key, patch)?;
        let written_paths = written_paths(key, patch)?;
        let expected: Vec<(String, i64)> = patch
            .expect
            .iter()
            .map(|(f, v)| {
                Ok((
                    json_path(BACKEND, key, f)?,
                    i64::try_from(*v).unwrap_or(i64::MAX),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let sql = self.update_sql(patch);
        // Bound in the order the `?` stand in the statement.
        let mut query = sqlx::query(&sql).bind(now);
        for path in &removed {
            query = query.bind(path);
        }
        for (path, (_, value)) in set.iter().zip(&patch.set) {
            query = query.bind(path).bind(value);
        }
        query = query.bind(now);
        for path in &written_paths {
            query = query.bind(path).bind(now).bind(path);
        }
        query = query.bind(now).bind(writers_object(patch));
        query = query
            .bind(self.clock.expiry(patch.ttl))
            .bind(now)
            .bind(key_hash(key));
        for (path, version) in &expected {
            query = query.bind(now).bind(path).bind(version);
        }
        let done = query
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(BACKEND, StoreOp::Apply, key, e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates the record; `false` when a row is there already.
    async fn insert(&self, key: &str, patch: &Patch<'_>) -> Result<bool, StoreError> {
        let (_, set) = patch_paths(BACKEND, key, patch)?;
        let written_paths = written_paths(key, patch)?;
        let sql = self.insert_sql(patch);
        let mut query = sqlx::query(&sql).bind(key_hash(key)).bind(key);
        for (path, (_, value)) in set.iter().zip(&patch.set) {
            query = query.bind(path).bind(value);
        }
        for path in &written_paths {
            query = query.bind(path);
        }
        match query
            .bind(writers_object(patch))
            .bind(self.clock.expiry(patch.ttl))
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(db_error(BACKEND, StoreOp::Apply, key, e)),
        }
    }

    /// The conflict of a refused patch, with the record read to name the fields that differ.
    async fn conflict(&self, key: &str, patch: &Patch<'_>) -> StoreError {
        match self.fetch(key, StoreOp::Apply).await {
            Ok(current) => conflict(BACKEND, key, patch, current.unwrap_or_default()),
            Err(error) => error,
        }
    }

    /// The live record of `key`, read for `op`.
    async fn fetch(&self, key: &str, op: StoreOp) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query(&self.sql.load)
            .bind(key_hash(key))
            .bind(self.clock.now_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(BACKEND, op, key, e))?;
        let Some(row) = row else { return Ok(None) };
        // A binary collation makes the server describe the column as a BLOB: read bytes.
        let text = |column: usize| -> Result<&str, StoreError> {
            let bytes: &[u8] = row
                .try_get(column)
                .map_err(|e| db_error(BACKEND, op, key, e))?;
            std::str::from_utf8(bytes).map_err(|e| StoreError::Malformed {
                backend: BACKEND,
                key: key.to_owned(),
                field: String::new(),
                message: format!("the stored session is not UTF-8: {e}"),
            })
        };
        let mut record = parse_record(BACKEND, key, text(0)?)?;
        record.versions = parse_versions(BACKEND, key, text(1)?)?;
        record.writers = parse_writers(BACKEND, key, text(2)?)?;
        Ok(Some(record))
    }
}

/// The JSON paths of every field a patch writes (sets, then removes).
fn written_paths(key: &str, patch: &Patch<'_>) -> Result<Vec<String>, StoreError> {
    patch
        .written_fields()
        .map(|f| json_path(BACKEND, key, f))
        .collect()
}

/// How many fields a patch writes (sets or removes).
fn written(patch: &Patch<'_>) -> usize {
    patch.set.len() + patch.remove.len()
}

impl Store for MySqlStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.deadline,
            StoreOp::Load,
            key,
            self.fetch(key, StoreOp::Load),
        ))
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.deadline,
            StoreOp::Apply,
            key,
            async move {
                crate::store::check_size(BACKEND, patch)?;
                let now = self.clock.now_ms();
                if patch.only_renews() {
                    if let Some(expires_at) = self.clock.expiry(patch.ttl) {
                        sqlx::query(&self.sql.renew)
                            .bind(expires_at)
                            .bind(key_hash(key))
                            .bind(now)
                            .execute(&self.pool)
                            .await
                            .map_err(|e| db_error(BACKEND, StoreOp::Apply, key, e))?;
                    }
                    return Ok(());
                }
                // Most writes patch a record that exists: one statement. A new record takes a
                // second, the insert, which fails if another writer created it meanwhile.
                let may_create = patch.expect.iter().all(|(_, version)| *version == 0);
                // Twice: a record another writer created between our update and our insert is
                // updated on the second pass.
                for _ in 0..2 {
                    if self.update(key, patch, now).await? {
                        return Ok(());
                    }
                    if !may_create {
                        break;
                    }
                    if self.insert(key, patch).await? {
                        return Ok(());
                    }
                }
                Err(self.conflict(key, patch).await)
            },
        ))
    }

    /// Pages in the order of the primary key (the keys' SHA-256), each a scan from the
    /// cursor that keeps the keys starting with `prefix` (`LIKE`, which unlike `=` and `<`
    /// minds trailing spaces under the table's collation). A walk reads the table once,
    /// however selective the prefix.
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.deadline,
            StoreOp::List,
            "",
            async move {
                let t = &self.sql.table;
                let failed = |e| db_error(BACKEND, StoreOp::List, "", e);
                let after = match cursor {
                    Some(cursor) => {
                        hex_decode(cursor.as_str()).ok_or_else(|| StoreError::Config {
                            backend: BACKEND,
                            message: format!("{cursor:?} is not a cursor of this store"),
                        })?
                    }
                    None => Vec::new(),
                };
                let pattern: String = prefix
                    .chars()
                    .flat_map(|c| match c {
                        '!' | '%' | '_' => vec!['!', c],
                        c => vec![c],
                    })
                    .chain(['%'])
                    .collect();
                let read = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
                let mut rows = sqlx::query(&format!(
                "SELECT key_hash, session_key FROM {t} WHERE key_hash > ? AND session_key LIKE ? ESCAPE '!' \
                 AND (expires_at IS NULL OR expires_at > ?) ORDER BY key_hash LIMIT ?"
            ))
            .bind(after)
            .bind(pattern)
            .bind(self.clock.now_ms())
            .bind(read)
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
                let more = rows.len() > limit;
                rows.truncate(limit);
                let next = match rows.last().filter(|_| more) {
                    Some(row) => Some(Cursor::new(hex_encode(
                        &row.try_get::<Vec<u8>, _>(0).map_err(failed)?,
                    ))),
                    None => None,
                };
                let mut keys = Vec::with_capacity(rows.len());
                for row in &rows {
                    // A binary collation makes the column a BLOB to the driver.
                    let bytes: Vec<u8> = row.try_get(1).map_err(failed)?;
                    keys.push(listed_key(BACKEND, bytes)?);
                }
                Ok(Page { keys, next })
            },
        ))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.deadline,
            StoreOp::Delete,
            key,
            async move {
                sqlx::query(&self.sql.delete)
                    .bind(key_hash(key))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| db_error(BACKEND, StoreOp::Delete, key, e))?;
                Ok(())
            },
        ))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
