//! [`SqliteStore`]: sessions in an embedded SQLite database (feature `sqlite`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    Clock, DEFAULT_TABLE, db_error, edit_expression, parse_record, patch_paths, table_name,
};
use crate::error::{StoreError, StoreOp};
use crate::store::{BoxFuture, Patch, Record, Store};

const BACKEND: &str = "sqlite";

/// Sessions in SQLite, embedded: a file, or memory. SQLite is compiled in, so a fresh machine
/// needs no system library.
///
/// Table (`typed_sessions` unless [`with_table`](Self::with_table)):
///
/// ```sql
/// CREATE TABLE typed_sessions (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL, expires_at INTEGER)
/// ```
///
/// `data` is a JSON object of the stored fields, e.g. `{"count":3,"lang":"de"}`; a patch edits
/// it with one `INSERT .. ON CONFLICT DO UPDATE SET data = json_set(json_remove(data, ..), ..)`.
/// See the `sql` module docs for why a JSON column rather than a row per field.
///
/// # Example
///
/// ```
/// use typed_session::{Patch, SqliteStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// store.apply("7:7", &Patch { set: vec![("count", "1".into())], ..Patch::default() }).await?;
/// assert_eq!(store.load("7:7").await?.unwrap()["count"], "1");
/// # Ok::<(), typed_session::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    table: Arc<str>,
    load_sql: Arc<str>,
    clock: Clock,
}

impl SqliteStore {
    /// Opens `url`: `sqlite://path/to/file.db` (created if missing; WAL journal,
    /// `synchronous=NORMAL`) or `sqlite::memory:` (one connection, gone when the store is).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| db_error(BACKEND, StoreOp::Connect, "", e))?
            .create_if_missing(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = if in_memory {
            // Every connection to ":memory:" is its own database: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(
                    options
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal),
                )
                .await
        }
        .map_err(|e| db_error(BACKEND, StoreOp::Connect, "", e))?;
        Ok(Self::from_pool(pool))
    }

    /// A store over an existing pool, used as it is (DESIGN C6).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self::build(pool, Arc::from(DEFAULT_TABLE), Clock::system())
    }

    fn build(pool: SqlitePool, table: Arc<str>, clock: Clock) -> Self {
        let load_sql = format!(
            "SELECT data FROM {table} WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
        );
        SqliteStore {
            pool,
            table,
            load_sql: Arc::from(load_sql),
            clock,
        }
    }

    /// Uses table `name` instead of `typed_sessions`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] when the name is not a plain identifier.
    pub fn with_table(self, name: &str) -> Result<Self, StoreError> {
        let table = table_name(BACKEND, name)?;
        Ok(Self::build(self.pool, table, self.clock))
    }

    /// Reads the time from `now_ms` (milliseconds since the Unix epoch) instead of the system
    /// clock, so tests can move time.
    pub fn with_clock(self, now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self::build(self.pool, self.table, Clock::custom(now_ms))
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates the table and its expiry index if they do not exist.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let table = &self.table;
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL, expires_at INTEGER)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {table}_expires_at ON {table} (expires_at)"),
        ];
        for sql in statements {
            sqlx::query(&sql)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Migrate, "", e))?;
        }
        Ok(())
    }

    /// Deletes expired sessions; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE expires_at IS NOT NULL AND expires_at <= ?",
            self.table
        );
        let done = sqlx::query(&sql)
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
        let table = &self.table;
        let insert = edit_expression(
            "'{}'",
            &Patch {
                remove: vec![],
                ..patch.clone()
            },
            "json(?)",
        );
        let current =
            "(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{}' ELSE data END)";
        let update = edit_expression(current, patch, "json(?)");
        format!(
            "INSERT INTO {table} (key, data, expires_at) VALUES (?, {insert}, ?) \
             ON CONFLICT (key) DO UPDATE SET data = {update}, \
             expires_at = COALESCE(excluded.expires_at, CASE WHEN expires_at <= ? THEN NULL ELSE expires_at END)"
        )
    }
}

impl Store for SqliteStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(&self.load_sql)
                .bind(key)
                .bind(self.clock.now_ms())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Load, key, e))?;
            let Some(row) = row else { return Ok(None) };
            let data: &str = row
                .try_get(0)
                .map_err(|e| db_error(BACKEND, StoreOp::Load, key, e))?;
            parse_record(BACKEND, key, data).map(Some)
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (removed, set) = patch_paths(BACKEND, key, patch)?;
            let sql = self.apply_sql(patch);
            let now = self.clock.now_ms();
            let mut query = sqlx::query(&sql).bind(key);
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

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let sql = format!("DELETE FROM {} WHERE key = ?", self.table);
            sqlx::query(&sql)
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Delete, key, e))?;
            Ok(())
        })
    }
}
