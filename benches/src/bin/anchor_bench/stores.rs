//! Part D-like and E: the full middleware on persistent stores, one update at a time or many
//! in flight, beside the raw driver.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use typed_session::schema::Schema;
use typed_session::{BoxError, Freshness, MemoryStore, Store};

use crate::chains::{Count, Counted, count_chain_with};
use crate::meter::{measure, median, peak_rss_mb, r3};
use crate::options::Options;
use crate::workload::{feed, user_id, user_sequence, window};

pub(crate) async fn open_store(name: &str, run: usize) -> Result<Arc<dyn Store>, BoxError> {
    let table = format!("bench_{}_{run}", std::process::id());
    let _ = &table; // unused when no SQL store is compiled in
    let env = |var: &str| std::env::var(var).map_err(|_| format!("--store {name} needs {var}"));
    Ok(match name {
        "memory" => Arc::new(MemoryStore::new()),
        "sqlite-memory"
        | "sqlite-wal"
        | "sqlite-wal-group"
        | "sqlite-wal-single"
        | "sqlite-wal-exclusive"
        | "sqlite-wal-full" => {
            let url = if name == "sqlite-memory" {
                "sqlite::memory:".to_owned()
            } else {
                let path = std::env::temp_dir().join(format!(
                    "typed-session-bench-{}-{run}.db",
                    std::process::id()
                ));
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                format!("sqlite://{}", path.display())
            };
            let mut store = typed_session::SqliteStore::connect(&url)
                .await?
                .with_table(&table)?;
            // Group commit is on by default; `sqlite-wal-single` measures a commit per patch.
            if name == "sqlite-wal-single" {
                store = store.with_group_commit(false);
            }
            // `sqlite-wal-full`: every commit synced to the disk before it is acknowledged.
            if name == "sqlite-wal-full" {
                store = store.with_durability(typed_session::store::Durability::Full)?;
            }
            store.migrate().await?;
            // `sqlite-wal-exclusive`: the file's locks taken once, for the whole run.
            if name == "sqlite-wal-exclusive" {
                store = store.with_locking(typed_session::store::Locking::Exclusive)?;
            }
            Arc::new(store)
        }
        "postgres" => {
            let store = typed_session::PostgresStore::connect(&env("POSTGRES_URL")?)
                .await?
                .with_table(&table)?;
            store.migrate().await?;
            Arc::new(store)
        }
        "mysql" => {
            let store = typed_session::MySqlStore::connect(&env("MYSQL_URL")?)
                .await?
                .with_table(&table)?;
            store.migrate().await?;
            Arc::new(store)
        }
        "redis" => Arc::new(
            typed_session::RedisStore::connect(&env("REDIS_URL")?)
                .await?
                .with_prefix(&format!("{table}:")),
        ),
        "redis-cluster" => {
            let urls = env("REDIS_CLUSTER_URLS")?;
            let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
            Arc::new(
                typed_session::RedisStore::connect_cluster(&nodes)
                    .await?
                    .with_prefix(&format!("{table}:")),
            )
        }
        "mongodb" => {
            let store =
                typed_session::MongoStore::connect(&env("MONGODB_URL")?, "typed_session_bench")
                    .await?
                    .with_collection(&table)?;
            store.migrate().await?;
            Arc::new(store)
        }
        other => {
            let _ = env;
            return Err(format!(
                "unknown or not compiled-in store {other:?} (build with --all-features)"
            )
            .into());
        }
    })
}

/// Removes the SQLite files the runs of this process made (the store's and the raw row's),
/// with their write-ahead logs.
fn remove_sqlite_files(runs: usize) {
    let pid = std::process::id();
    for run in 0..=runs {
        for name in [
            format!("typed-session-bench-{pid}-{run}.db"),
            format!("raw_{pid}_{run}.db"),
        ] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{name}{suffix}")));
            }
        }
    }
}

pub(crate) async fn store_bench(o: &Options) -> Result<serde_json::Value, BoxError> {
    let seq = user_sequence(o.updates, o.users);
    let (mut ups, mut others, mut cpu_wall) = (vec![], vec![], vec![]);
    let (mut lost, mut rejected, mut round_trips) = (0u64, 0, (0.0, 0.0));
    let mut tries = 0;
    for run in 0.. {
        if ups.len() >= o.runs {
            break;
        }
        if o.variant == "raw" {
            let raw = Arc::new(raw::Raw::open(&o.store, run).await?);
            let m = if o.workload == "window" {
                let r = Arc::clone(&raw);
                measure(window(&seq, o.width, move |_, u| {
                    let r = Arc::clone(&r);
                    async move { r.increment(&raw_key(u)).await }
                }))
                .await?
            } else {
                measure(async {
                    for &u in &seq {
                        raw.increment(&raw_key(u)).await?;
                    }
                    Ok(())
                })
                .await?
            };
            let warmup = run == 0;
            tries += 1;
            if !warmup && m.others_pct > o.max_others && tries < 5 * o.runs {
                rejected += 1;
            } else if !warmup {
                ups.push((o.updates as f64 / m.wall).round());
                others.push(m.others_pct);
                cpu_wall.push((m.cpu / m.wall * 100.0).round() / 100.0);
                round_trips = (1.0, 1.0);
            }
            lost = 0;
            for (u, n) in expected_counts(&seq) {
                lost += n.saturating_sub(raw.count(&raw_key(u)).await?);
                raw.forget(&raw_key(u)).await?;
            }
            raw.close().await?;
            continue;
        }
        let store = Arc::new(Counted::new(open_store(&o.store, run).await?));
        let variant = o.variant.clone();
        let chain = Arc::new(count_chain_with(
            Arc::clone(&store) as Arc<dyn Store>,
            move |builder| {
                let (wait, term) = (Duration::from_secs(10), Duration::from_secs(10));
                match variant.as_str() {
                    "cached" => builder.freshness(Freshness::Cached),
                    "leased" => builder.exclusive_across_processes(wait, term),
                    "leased-kept" => builder
                        .exclusive_across_processes(wait, term)
                        .keep_lease(Duration::from_secs(1)),
                    _ => builder,
                }
            },
        ));
        let m = measure(feed(&chain, &seq, &o.workload, o.width)).await?;
        let warmup = run == 0;
        tries += 1;
        if !warmup && m.others_pct > o.max_others && tries < 5 * o.runs {
            rejected += 1;
        } else if !warmup {
            ups.push((o.updates as f64 / m.wall).round());
            others.push(m.others_pct);
            cpu_wall.push((m.cpu / m.wall * 100.0).round() / 100.0);
            round_trips = (
                store.loads.load(Ordering::Relaxed) as f64 / o.updates as f64,
                store.applies.load(Ordering::Relaxed) as f64 / o.updates as f64,
            );
        }
        lost = 0;
        for (u, n) in expected_counts(&seq) {
            // Stored under the session type's namespace.
            let key = format!("{}:{1}:{1}", Count::NAMESPACE, user_id(u));
            let stored = store
                .load(&key)
                .await?
                .and_then(|r| r.get("count").and_then(|c| c.parse::<u64>().ok()))
                .unwrap_or(0);
            lost += n.saturating_sub(stored);
            // Nothing of a run is left on a shared server (a Redis keyspace full of old runs
            // slows the test suite's scans).
            store.delete(&key).await?;
        }
    }
    remove_sqlite_files(tries);
    let med = median(&ups);
    let (bench, journal) = match o.store.as_str() {
        "sqlite-wal" => ("sqlite", "wal-normal"),
        "sqlite-wal-group" => ("sqlite", "wal-normal-group-commit"),
        "sqlite-wal-single" => ("sqlite", "wal-normal-single-commit"),
        "sqlite-wal-exclusive" => ("sqlite", "wal-normal-exclusive-locking"),
        // The anchors name WAL with synchronous=FULL plain `wal`.
        "sqlite-wal-full" => ("sqlite", "wal"),
        "sqlite-memory" => ("sqlite", "memory"),
        _ => ("store", ""),
    };
    let fw = if o.variant == "raw" {
        "raw-driver"
    } else {
        "typed-session"
    };
    let width = if o.workload == "window" { o.width } else { 1 };
    // How a session is known to be current: loaded (checked), trusted (cached), or under
    // the key's lease, claimed per update or kept between them.
    let freshness = match o.variant.as_str() {
        variant @ ("cached" | "leased" | "leased-kept") => variant,
        _ => "checked",
    };
    Ok(json!({
        "bench": bench, "fw": fw, "store": o.store, "freshness": freshness, "journal": journal, "workload": o.workload, "width": width,
        "updates": o.updates, "users": o.users, "median_ups": med, "us_per_update": r3(1e6 / med),
        "runs_ups": ups, "runs_cpu_wall": cpu_wall, "runs_others_busy_pct": others, "rejected_runs": rejected,
        "lost_updates": lost, "loads_per_update": r3(round_trips.0), "writes_per_update": r3(round_trips.1),
        "peak_rss_mb": peak_rss_mb(), "api_calls": 0, "sink_ok": true,
    }))
}

/// How many updates each user gets in `seq`.
pub(crate) fn expected_counts(seq: &[u32]) -> HashMap<u32, u64> {
    let mut expected: HashMap<u32, u64> = HashMap::new();
    for &u in seq {
        *expected.entry(u).or_default() += 1;
    }
    expected
}

pub(crate) fn raw_key(u: u32) -> String {
    format!("{0}:{0}", user_id(u))
}

/// The physical limit of this design on each store: the same two round trips per update (read
/// the session by key, write the changed field back merged into it), hand-written through the
/// driver, with nothing else: no versions, no writers, no condition (so, like Telegraf, it
/// loses increments when updates of one user overlap).
pub(crate) mod raw {
    use std::sync::Arc;

    use typed_session::BoxError;
    use typed_session::redis::AsyncCommands;
    use typed_session::sqlx::{self, Row};

    pub(crate) enum Raw {
        Postgres(sqlx::PgPool, String),
        MySql(sqlx::MySqlPool, String),
        Redis(typed_session::redis::aio::ConnectionManager, String),
        Sqlite(Arc<parking_lot::Mutex<typed_session::rusqlite::Connection>>),
    }

    fn count_of(data: Option<String>) -> u64 {
        data.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0)
    }

    impl Raw {
        pub(crate) async fn open(store: &str, run: usize) -> Result<Self, BoxError> {
            let table = format!("raw_{}_{run}", std::process::id());
            let env =
                |var: &str| std::env::var(var).map_err(|_| format!("--store {store} needs {var}"));
            Ok(match store {
                "postgres" => {
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(16)
                        .connect(&env("POSTGRES_URL")?)
                        .await?;
                    sqlx::query(&format!(
                        "CREATE TABLE {table} (key TEXT PRIMARY KEY, data JSONB NOT NULL)"
                    ))
                    .execute(&pool)
                    .await?;
                    Raw::Postgres(pool, table)
                }
                "mysql" => {
                    let pool = sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(16)
                        .connect(&env("MYSQL_URL")?)
                        .await?;
                    sqlx::query(&format!(
                        "CREATE TABLE {table} (k VARCHAR(100) PRIMARY KEY, data JSON NOT NULL)"
                    ))
                    .execute(&pool)
                    .await?;
                    Raw::MySql(pool, table)
                }
                "redis" => {
                    let client = typed_session::redis::Client::open(env("REDIS_URL")?)?;
                    let connection =
                        typed_session::redis::aio::ConnectionManager::new(client).await?;
                    Raw::Redis(connection, format!("{table}:"))
                }
                "sqlite-wal" | "sqlite-wal-exclusive" => {
                    let path = std::env::temp_dir().join(format!("{table}.db"));
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                    let connection = typed_session::rusqlite::Connection::open(&path)?;
                    connection.execute_batch(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         CREATE TABLE sessions (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL);",
                    )?;
                    if store == "sqlite-wal-exclusive" {
                        connection.execute_batch(
                            "PRAGMA locking_mode = EXCLUSIVE; BEGIN IMMEDIATE; COMMIT;",
                        )?;
                    }
                    Raw::Sqlite(Arc::new(parking_lot::Mutex::new(connection)))
                }
                other => return Err(format!("no raw row for {other}").into()),
            })
        }

        /// Reads the session, adds one to `count`, writes the field back.
        pub(crate) async fn increment(&self, key: &str) -> Result<(), BoxError> {
            let count = self.count(key).await? + 1;
            let data = format!("{{\"count\":{count}}}");
            match self {
                Raw::Postgres(pool, t) => {
                    sqlx::query(&format!(
                        "INSERT INTO {t} (key, data) VALUES ($1, $2::jsonb) \
                         ON CONFLICT (key) DO UPDATE SET data = {t}.data || EXCLUDED.data"
                    ))
                    .bind(key)
                    .bind(data)
                    .execute(pool)
                    .await?;
                }
                Raw::MySql(pool, t) => {
                    sqlx::query(&format!(
                        "INSERT INTO {t} (k, data) VALUES (?, ?) \
                         ON DUPLICATE KEY UPDATE data = JSON_MERGE_PATCH(data, VALUES(data))"
                    ))
                    .bind(key)
                    .bind(data)
                    .execute(pool)
                    .await?;
                }
                Raw::Redis(connection, prefix) => {
                    let mut connection = connection.clone();
                    let () = connection
                        .hset(format!("{prefix}{key}"), "count", count)
                        .await?;
                }
                Raw::Sqlite(connection) => {
                    connection
                        .lock()
                        .prepare_cached(
                            "INSERT INTO sessions (key, data) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO UPDATE SET data = json_patch(data, excluded.data)",
                        )?
                        .execute((key, data))?;
                }
            }
            Ok(())
        }

        pub(crate) async fn count(&self, key: &str) -> Result<u64, BoxError> {
            Ok(match self {
                Raw::Postgres(pool, t) => count_of(
                    sqlx::query(&format!("SELECT data::text FROM {t} WHERE key = $1"))
                        .bind(key)
                        .fetch_optional(pool)
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?,
                ),
                Raw::MySql(pool, t) => count_of(
                    sqlx::query(&format!("SELECT CAST(data AS CHAR) FROM {t} WHERE k = ?"))
                        .bind(key)
                        .fetch_optional(pool)
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?,
                ),
                Raw::Redis(connection, prefix) => {
                    let mut connection = connection.clone();
                    let count: Option<u64> =
                        connection.hget(format!("{prefix}{key}"), "count").await?;
                    count.unwrap_or(0)
                }
                Raw::Sqlite(connection) => {
                    use typed_session::rusqlite::OptionalExtension;
                    count_of(
                        connection
                            .lock()
                            .prepare_cached("SELECT data FROM sessions WHERE key = ?1")?
                            .query_row([key], |row| row.get(0))
                            .optional()?,
                    )
                }
            })
        }

        /// Deletes a session a run wrote where its table is not dropped at the end.
        pub(crate) async fn forget(&self, key: &str) -> Result<(), BoxError> {
            if let Raw::Redis(connection, prefix) = self {
                let mut connection = connection.clone();
                let () = connection.del(format!("{prefix}{key}")).await?;
            }
            Ok(())
        }

        pub(crate) async fn close(&self) -> Result<(), BoxError> {
            match self {
                Raw::Postgres(pool, t) => {
                    sqlx::query(&format!("DROP TABLE {t}"))
                        .execute(pool)
                        .await?;
                }
                Raw::MySql(pool, t) => {
                    sqlx::query(&format!("DROP TABLE {t}"))
                        .execute(pool)
                        .await?;
                }
                Raw::Redis(..) | Raw::Sqlite(..) => {}
            }
            Ok(())
        }
    }
}
