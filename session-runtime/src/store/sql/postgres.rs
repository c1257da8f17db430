//! [`PostgresStore`]: sessions in PostgreSQL (feature `postgres`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool};

use super::primary::{Hosts, split_hosts};
use super::{
    Clock, DEFAULT_TABLE, KeyRange, SqlOptions, conflict, db_error, expectations, key_hash,
    new_versions, parse_record, parse_versions, parse_writers, set_object, table_name,
    unwrap_values, writers_object,
};
use crate::error::{StoreError, StoreOp};
use crate::store::{Cursor, Page, Patch, Record, Store, StoreFuture, listed_key, page_of, within};

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
/// # A primary with standbys
///
/// The URL may name several hosts, as libpq's do:
/// `postgres://user@db1:5432,db2:5432/bot?target_session_attrs=read-write`. The store writes
/// to the first, in that order, that is not a standby, and asks again after a call fails in a
/// way that says the primary may be gone: the first call after a standby's promotion reaches
/// it. Calls made while no host accepts writes fail (their updates are delivered again).
/// With synchronous replication (`synchronous_standby_names` on the primary,
/// `synchronous_commit = on`), a commit is acknowledged, and seen by other reads, only once a
/// standby has it, so a failover loses no acknowledged update; with asynchronous
/// replication, what the primary had not yet sent is lost with it (the guide's
/// `production` chapter).
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
    /// The hosts of a URL naming several (or asking for the primary), `None` otherwise.
    hosts: Option<Arc<Hosts>>,
    sql: Arc<Statements>,
    clock: Clock,
    /// The client's own bound on a call (twice the server-side deadline): a connection that
    /// died without a word does not hold an update forever.
    deadline: Duration,
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
    /// A patch that expects none of its fields to have been written: creates the row if
    /// needed.
    create_or_apply: String,
    /// A patch that expects a field to be there: the row must exist and be live.
    apply: String,
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
                "SELECT data::text, versions::text, writers::text FROM {t} WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
            ),
            // $1 key_hash, $2 key, $3 the set fields as one object, $4 expires_at, $5 now,
            // $6 the removed fields, $7 the fields written without an expected version, $8 the
            // expected non-zero versions as an object, $9 the fields expected never written,
            // $10 the writers to record, $11 the new versions of the fields written with an
            // expected version (one more than it: the condition makes it the stored one).
            // An expired row counts as empty; every written field's version goes up by one;
            // the update happens only if every expected version is the stored one.
            create_or_apply: format!(
                "INSERT INTO {t} AS s (key_hash, key, data, versions, writers, expires_at) \
                 VALUES ($1, $2, $3::jsonb, $11::jsonb || {created}, $10::jsonb, $4) \
                 ON CONFLICT (key_hash) DO UPDATE SET \
                 data = ({data} - $6::text[]) || $3::jsonb, \
                 versions = {versions} || $11::jsonb || {bumped}, \
                 writers = {writers} || $10::jsonb, \
                 expires_at = COALESCE(EXCLUDED.expires_at, CASE WHEN s.expires_at <= $5 THEN NULL ELSE s.expires_at END) \
                 WHERE {expected}",
                created = bumped("'{}'::jsonb", "$7"),
                data = current("data", "$5"),
                versions = current("versions", "$5"),
                writers = current("writers", "$5"),
                bumped = bumped(&current("versions", "$5"), "$7"),
                expected = expected(&current("versions", "$5"), "$8", "$9"),
            ),
            // $1 key_hash, $2 the set fields, $3 expires_at, $4 now, $5 the removed fields,
            // $6 the fields written without an expected version, $7 and $8 the expected
            // versions, $9 the writers to record, $10 the new versions of the other written
            // fields, as in the other.
            apply: format!(
                "UPDATE {t} AS s SET \
                 data = (s.data - $5::text[]) || $2::jsonb, \
                 versions = s.versions || $10::jsonb || {bumped}, \
                 writers = s.writers || $9::jsonb, \
                 expires_at = COALESCE($3, s.expires_at) \
                 WHERE s.key_hash = $1 AND (s.expires_at IS NULL OR s.expires_at > $4) AND {expected}",
                bumped = bumped("s.versions", "$6"),
                expected = expected("s.versions", "$7", "$8"),
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = $2 WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > $3)"
            ),
            delete: format!("DELETE FROM {t} WHERE key_hash = $1"),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= $1"),
            table,
        }
    }
}

/// A column of the row being updated, empty if the row has expired at `now`.
fn current(column: &str, now: &str) -> String {
    format!(
        "(CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= {now} THEN '{{}}'::jsonb ELSE s.{column} END)"
    )
}

/// The new versions of the fields in `written`: one more than in `versions`. Only patches
/// written through the `Store` API without a condition have such fields (the runtime's patches
/// expect a version of every field they write, whose new version the caller computes), so the
/// sub-select runs only when the list is not empty: evaluated on every write, it cost about a
/// sixth of the statement's server time (ARCHITECTURE.md, "No stale overwrite").
fn bumped(versions: &str, written: &str) -> String {
    format!(
        "(CASE WHEN cardinality({written}::text[]) = 0 THEN '{{}}'::jsonb ELSE \
         (SELECT COALESCE(jsonb_object_agg(f, COALESCE(({versions}->>f)::bigint, 0) + 1), '{{}}'::jsonb) FROM unnest({written}::text[]) AS f) END)"
    )
}

/// Whether `versions` holds every version of the object `nonzero` and none of the fields in
/// `zero`. Operators on the row only, no sub-select: under READ COMMITTED, PostgreSQL checks
/// the condition again on the row a concurrent transaction just committed (a sub-select in
/// the condition would keep its first answer, and let a stale write through).
fn expected(versions: &str, nonzero: &str, zero: &str) -> String {
    format!("({versions} @> {nonzero}::jsonb AND NOT ({versions} ?| {zero}::text[]))")
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`, or several hosts as
    /// `host1:port1,host2:port2`, see [above](Self#a-primary-with-standbys)) with a pool of its
    /// own, of the default size and deadlines ([`SqlOptions`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// [`connect`](Self::connect) with another pool size and deadline.
    pub async fn connect_with(url: &str, options: SqlOptions) -> Result<Self, StoreError> {
        let error = |e| db_error(BACKEND, StoreOp::Connect, "", e);
        let ms = options.timeout.as_millis().to_string();
        let parse = |url: &str| -> Result<PgConnectOptions, StoreError> {
            let connect: PgConnectOptions = url.parse().map_err(error)?;
            Ok(connect.options([("statement_timeout", &ms), ("lock_timeout", &ms)]))
        };
        let config = |message| StoreError::Config {
            backend: BACKEND,
            message,
        };
        let (connect, hosts) = match split_hosts(url).map_err(config)? {
            None => (parse(url)?, None),
            Some(urls) => {
                let candidates = urls
                    .iter()
                    .map(|url| parse(url))
                    .collect::<Result<_, _>>()?;
                let hosts = Hosts::new(candidates, options.timeout);
                let primary = tokio::time::timeout(options.client_deadline(), hosts.primary())
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::backend(
                            BACKEND,
                            StoreOp::Connect,
                            "",
                            crate::error::DeadlineExceeded::new(BACKEND, options.client_deadline()),
                        ))
                    })?;
                (primary, Some(Arc::new(hosts)))
            }
        };
        let pool = options.pool().connect_with(connect).await.map_err(error)?;
        let mut store = Self::from_pool(pool);
        store.hosts = hosts;
        store.deadline = options.client_deadline();
        Ok(store)
    }

    /// A store over an existing pool, used as it is: its own settings, such as sqlx's
    /// default ping of every connection it hands out (a second round trip per call, which the
    /// pools this store builds make only after a connection idled: see [`SqlOptions`]).
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresStore {
            pool,
            hosts: None,
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
                "CREATE TABLE IF NOT EXISTS {t} (key_hash BYTEA PRIMARY KEY, key BYTEA NOT NULL, data JSONB NOT NULL, versions JSONB NOT NULL DEFAULT '{{}}', writers JSONB NOT NULL DEFAULT '{{}}', expires_at BIGINT)"
            ),
            // Tables made before field versions and writers existed.
            format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS versions JSONB NOT NULL DEFAULT '{{}}'"
            ),
            format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS writers JSONB NOT NULL DEFAULT '{{}}'"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at) WHERE expires_at IS NOT NULL"
            ),
            // Listing keys by prefix (`Store::keys`) is a range scan of this index.
            format!("CREATE INDEX IF NOT EXISTS {t}_key ON {t} (key)"),
        ] {
            sqlx::query(&sql).execute(&mut *tx).await.map_err(error)?;
        }
        tx.commit().await.map_err(error)
    }

    /// Deletes expired sessions; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        self.call(StoreOp::Sweep, "", async {
            let done = sqlx::query(&self.sql.sweep)
                .bind(self.clock.now_ms())
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Sweep, "", e))?;
            Ok(done.rows_affected())
        })
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
}

impl PostgresStore {
    /// `work` for a call of `op` on `key`, bounded by the store's deadline; with several
    /// hosts, after finding the primary again if the last call said it may be gone.
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: StoreOp,
        key: &'a str,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, Result<T, StoreError>> {
        let Some(hosts) = &self.hosts else {
            return StoreFuture::new(within(BACKEND, self.deadline, op, key, work));
        };
        StoreFuture::new(async move {
            let ready_then_work = async {
                hosts.ready(&self.pool, op, key).await?;
                work.await
            };
            let result = within(BACKEND, self.deadline, op, key, ready_then_work).await;
            if let Err(error) = &result {
                hosts.note(error);
            }
            result
        })
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
        let column = |i: usize| -> Result<&str, StoreError> {
            row.try_get(i).map_err(|e| db_error(BACKEND, op, key, e))
        };
        let mut record = parse_record(BACKEND, key, column(0)?)?;
        unwrap_values(&mut record);
        record.versions = parse_versions(BACKEND, key, column(1)?)?;
        record.writers = parse_writers(BACKEND, key, column(2)?)?;
        Ok(Some(record))
    }
}

impl Store for PostgresStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        self.call(StoreOp::Load, key, self.fetch(key, StoreOp::Load))
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        self.call(StoreOp::Apply, key, async move {
            crate::store::check_size(BACKEND, patch)?;
            if patch.only_renews() {
                if let Some(expires_at) = self.clock.expiry(patch.ttl) {
                    sqlx::query(&self.sql.renew)
                        .bind(key_hash(key))
                        .bind(expires_at)
                        .bind(self.clock.now_ms())
                        .execute(&self.pool)
                        .await
                        .map_err(|e| db_error(BACKEND, StoreOp::Apply, key, e))?;
                }
                return Ok(());
            }
            // The expectations as the statements take them: the non-zero versions as one
            // object, the fields expected never written as a list.
            let (fields, versions) = expectations(BACKEND, key, patch)?;
            let (pinned, unpinned) = new_versions(BACKEND, key, patch, &fields, &versions)?;
            let mut nonzero = serde_json::Map::new();
            let mut zero = Vec::new();
            for (field, version) in fields.iter().zip(&versions) {
                match version {
                    0 => zero.push(*field),
                    v => {
                        nonzero.insert((*field).to_owned(), (*v).into());
                    }
                }
            }
            let may_create = nonzero.is_empty();
            let nonzero = serde_json::Value::Object(nonzero).to_string();
            let now = self.clock.now_ms();
            // The two statements take the same parameters, but for the key the insert needs.
            let mut query = if may_create {
                sqlx::query(&self.sql.create_or_apply)
                    .bind(key_hash(key))
                    .bind(key.as_bytes())
            } else {
                sqlx::query(&self.sql.apply).bind(key_hash(key))
            };
            query = query
                .bind(set_object(patch))
                .bind(self.clock.expiry(patch.ttl))
                .bind(now)
                .bind(&patch.remove)
                .bind(&unpinned)
                .bind(nonzero)
                .bind(&zero)
                .bind(writers_object(patch))
                .bind(pinned);
            let done = query
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Apply, key, e))?;
            if done.rows_affected() > 0 {
                return Ok(());
            }
            // Refused: read the record, to name the fields that differ and to hand it to
            // the writer.
            let current = self.fetch(key, StoreOp::Apply).await?.unwrap_or_default();
            Err(conflict(BACKEND, key, patch, current))
        })
    }

    /// One range scan of the key index per page (made by [`migrate`](Self::migrate)), in
    /// byte order of the keys.
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        let Some(range) = KeyRange::new(prefix, cursor) else {
            return StoreFuture::ready(Ok(Page::default()));
        };
        self.call(
            StoreOp::List,
            "",
            async move {
                let t = &self.sql.table;
                let failed = |e| db_error(BACKEND, StoreOp::List, "", e);
                let bounded = usize::from(range.to.is_some());
                let condition = range.condition("key", |n| format!("${n}"));
                let sql = format!(
                    "SELECT key FROM {t} WHERE {condition} AND (expires_at IS NULL OR expires_at > ${}) ORDER BY key LIMIT ${}",
                    2 + bounded,
                    3 + bounded
                );
                let mut query = sqlx::query(&sql).bind(range.from.as_bytes());
                if let Some(to) = &range.to {
                    query = query.bind(to.as_bytes());
                }
                let read = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
                let rows = query
                    .bind(self.clock.now_ms())
                    .bind(read)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(failed)?;
                let mut keys = Vec::with_capacity(rows.len());
                for row in rows {
                    let bytes: Vec<u8> = row.try_get(0).map_err(failed)?;
                    keys.push(listed_key(BACKEND, bytes)?);
                }
                Ok(page_of(keys, limit))
            },
        )
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        self.call(StoreOp::Delete, key, async move {
            sqlx::query(&self.sql.delete)
                .bind(key_hash(key))
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(BACKEND, StoreOp::Delete, key, e))?;
            Ok(())
        })
    }
}
