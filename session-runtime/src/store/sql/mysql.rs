//! [`MySqlStore`]: sessions in MySQL or MariaDB (feature `mysql`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::mysql::MySqlPool;

use super::{
    Clock, DEFAULT_TABLE, connect_pool, db_error, edit_expression, key_hash, parse_record,
    patch_paths, table_name,
};
use crate::error::{StoreError, StoreOp};
use crate::store::{Patch, Record, Store, StoreFuture};

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
    delete: String,
    sweep: String,
}

impl Statements {
    fn new(table: Arc<str>) -> Self {
        let t = &table;
        Statements {
            load: format!(
                "SELECT data FROM {t} WHERE key_hash = ? AND (expires_at IS NULL OR expires_at > ?)"
            ),
            delete: format!("DELETE FROM {t} WHERE key_hash = ?"),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?"),
            table,
        }
    }
}

impl MySqlStore {
    /// Connects to `url` (`mysql://user:password@host:port/database`) with a pool of its own.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_pool(connect_pool(BACKEND, url).await?))
    }

    /// A store over an existing pool, used as it is.
    pub fn from_pool(pool: MySqlPool) -> Self {
        MySqlStore {
            pool,
            sql: Arc::new(Statements::new(Arc::from(DEFAULT_TABLE))),
            clock: Clock::system(),
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
             data LONGTEXT NOT NULL, expires_at BIGINT NULL, INDEX {t}_expires_at (expires_at)) \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        );
        sqlx::query(&sql)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(BACKEND, StoreOp::Migrate, "", e))?;
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

    fn apply_sql(&self, patch: &Patch<'_>) -> String {
        let t = &self.sql.table;
        let value = "JSON_EXTRACT(?, '$')";
        let insert = edit_expression("'{}'", 0, patch.set.len(), value);
        let current = "IF(expires_at IS NOT NULL AND expires_at <= ?, '{}', data)";
        let update = edit_expression(current, patch.remove.len(), patch.set.len(), value);
        // MySQL evaluates the assignments in order: `data` must still see the old `expires_at`.
        format!(
            "INSERT INTO {t} (key_hash, session_key, data, expires_at) VALUES (?, ?, {insert}, ?) \
             ON DUPLICATE KEY UPDATE data = {update}, \
             expires_at = COALESCE(VALUES(expires_at), IF(expires_at <= ?, NULL, expires_at))"
        )
    }
}

impl Store for MySqlStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            let row = sqlx::query(&self.sql.load)
                .bind(key_hash(key))
                .bind(self.clock.now_ms())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Load, key, e))?;
            let Some(row) = row else { return Ok(None) };
            // A binary collation makes the server describe the column as a BLOB: read bytes.
            let data: &[u8] = row
                .try_get(0)
                .map_err(|e| db_error(BACKEND, StoreOp::Load, key, e))?;
            let data = std::str::from_utf8(data).map_err(|e| StoreError::Malformed {
                backend: BACKEND,
                key: key.to_owned(),
                field: String::new(),
                message: format!("the stored session is not UTF-8: {e}"),
            })?;
            parse_record(BACKEND, key, data).map(Some)
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let (removed, set) = patch_paths(BACKEND, key, patch)?;
            let sql = self.apply_sql(patch);
            let now = self.clock.now_ms();
            let mut query = sqlx::query(&sql).bind(key_hash(key)).bind(key);
            for (path, (_, value)) in set.iter().zip(&patch.set) {
                query = query.bind(path).bind(value);
            }
            query = query.bind(self.clock.expiry(patch.ttl)).bind(now);
            for path in &removed {
                query = query.bind(path);
            }
            for (path, (_, value)) in set.iter().zip(&patch.set) {
                query = query.bind(path).bind(value);
            }
            query
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Apply, key, e))?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            sqlx::query(&self.sql.delete)
                .bind(key_hash(key))
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Delete, key, e))?;
            Ok(())
        })
    }
}
