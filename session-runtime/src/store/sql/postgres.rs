//! [`PostgresStore`]: sessions in PostgreSQL (feature `postgres`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::{
    Clock, DEFAULT_TABLE, connect_pool, db_error, key_hash, parse_record, set_object, table_name,
};
use crate::error::{StoreError, StoreOp};
use crate::store::{Patch, Record, Store, StoreFuture};

const BACKEND: &str = "postgres";

/// Sessions in PostgreSQL.
///
/// Table (`typed_sessions` unless [`with_table`](Self::with_table)):
///
/// ```sql
/// CREATE TABLE typed_sessions (
///     key_hash BYTEA PRIMARY KEY,  -- SHA-256 of the key: keys of any length can be indexed
///     key BYTEA NOT NULL,          -- the key's UTF-8 bytes (TEXT cannot hold a NUL)
///     data JSONB NOT NULL,         -- {"count": 3, "lang": "de"}
///     expires_at BIGINT            -- ms since the Unix epoch, NULL for no expiry
/// )
/// ```
///
/// Every call is one fixed, prepared statement; a patch is
/// `data = (data - removed_fields) || set_fields`, merged by the database under the row lock.
///
/// # Example
///
/// ```no_run
/// use typed_session::PostgresStore;
///
/// # async fn run() -> Result<(), typed_session::StoreError> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
    clock: Clock,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

/// The statements, written once per table.
struct Statements {
    table: Arc<str>,
    load: String,
    apply: String,
    delete: String,
    sweep: String,
}

impl Statements {
    fn new(table: Arc<str>) -> Self {
        let t = &table;
        Statements {
            load: format!(
                "SELECT data::text FROM {t} WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
            ),
            apply: format!(
                "INSERT INTO {t} AS s (key_hash, key, data, expires_at) VALUES ($1, $2, $3::jsonb, $4) \
                 ON CONFLICT (key_hash) DO UPDATE SET \
                 data = ((CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= $5 THEN '{{}}'::jsonb ELSE s.data END) \
                         - $6::text[]) || $3::jsonb, \
                 expires_at = COALESCE(EXCLUDED.expires_at, CASE WHEN s.expires_at <= $5 THEN NULL ELSE s.expires_at END)"
            ),
            delete: format!("DELETE FROM {t} WHERE key_hash = $1"),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= $1"),
            table,
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) with a pool of its own.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_pool(connect_pool(BACKEND, url).await?))
    }

    /// A store over an existing pool, used as it is.
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresStore {
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table and its expiry index if they do not exist. Safe to run from several
    /// processes at once: it holds a transaction-scoped advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let t = &self.sql.table;
        let error = |e| db_error(BACKEND, StoreOp::Migrate, "", e);
        let mut tx = self.pool.begin().await.map_err(error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("typed_session:{t}"))
            .execute(&mut *tx)
            .await
            .map_err(error)?;
        for sql in [
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (key_hash BYTEA PRIMARY KEY, key BYTEA NOT NULL, data JSONB NOT NULL, expires_at BIGINT)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at) WHERE expires_at IS NOT NULL"
            ),
        ] {
            sqlx::query(&sql).execute(&mut *tx).await.map_err(error)?;
        }
        tx.commit().await.map_err(error)
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
}

impl Store for PostgresStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            let row = sqlx::query(&self.sql.load)
                .bind(key_hash(key))
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
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            sqlx::query(&self.sql.apply)
                .bind(key_hash(key))
                .bind(key.as_bytes())
                .bind(set_object(patch))
                .bind(self.clock.expiry(patch.ttl))
                .bind(self.clock.now_ms())
                .bind(&patch.remove)
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
