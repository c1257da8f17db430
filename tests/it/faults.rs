//! Faults an operator causes: a SQLite file another process holds locked, a PostgreSQL row
//! another client holds locked, a Redis of the test's own (started and signalled by the test on a
//! spare port) stopped with SIGSTOP, killed and restarted while updates keep coming. Every
//! call fails within the store's deadline while it is gone, sessions are served again within
//! seconds of its return, and, with each failed update delivered again as Telegram does, what
//! is stored equals what was acknowledged.
//!
//! Needs `redis-server` on the `PATH`; without it the tests print `SKIPPED faults::<test>` and
//! pass, unless `TYPED_SESSION_REQUIRE_SERVERS` is set (as `.ci/run` does).

#![cfg_attr(
    not(all(
        feature = "redis",
        feature = "postgres",
        feature = "sqlite",
        feature = "mongodb"
    )),
    allow(dead_code, unused_imports)
)]

use crate::common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Counter, incrementing};
use typed_session::telegram::Update;
use typed_session::{Chain, Context, SessionMiddleware};
#[cfg(feature = "redis")]
use typed_session::{RedisStore, Store, StoreError, StoreOp};

/// The deadline the faulty stores are given.
const TIMEOUT: Duration = Duration::from_millis(500);

/// A `redis-server` of this test's own.
#[cfg(feature = "redis")]
struct OwnRedis {
    port: u16,
    child: Child,
}

#[cfg(feature = "redis")]
impl OwnRedis {
    fn start(test: &str) -> Option<Self> {
        Self::on(free_port(), test)
    }

    fn on(port: u16, test: &str) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if std::env::var_os("TYPED_SESSION_REQUIRE_SERVERS").is_some() => {
                panic!("faults::{test} needs redis-server: {error}")
            }
            Err(error) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED faults::{test}: redis-server: {error}"
                );
                return None;
            }
        };
        let redis = OwnRedis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

#[cfg(feature = "redis")]
impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Delivers update `id` until it is acknowledged, as Telegram does with a webhook answered
/// with an error; returns the failed deliveries and the longest one.
async fn deliver(chain: &Chain<Update>, id: i64) -> (u32, Duration) {
    let (mut failed, mut longest) = (0, Duration::ZERO);
    loop {
        let ctx = Context::new(Update::text(id, 7, 7, "+1"));
        let started = Instant::now();
        let outcome = chain.run(&ctx).await;
        longest = longest.max(started.elapsed());
        match outcome {
            Ok(()) => return (failed, longest),
            Err(_) => {
                failed += 1;
                // Telegram waits before it delivers again; so does this test, briefly.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A loopback port nothing listens on (yet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A store on `redis` with the test's deadline, and a counting chain over it.
#[cfg(feature = "redis")]
async fn counting_on(redis: &OwnRedis) -> (RedisStore, Chain<Update>) {
    let store = RedisStore::connect_with_timeout(&redis.url(), TIMEOUT)
        .await
        .expect("connect");
    let chain = incrementing(&SessionMiddleware::<Counter, Update>::new(store.clone()));
    (store, chain)
}

#[cfg(feature = "redis")]
async fn stored_count(store: &RedisStore) -> u64 {
    let record = store.load("Counter:7:7").await.expect("load");
    record
        .and_then(|r| r.get("count").map(|c| c.parse().expect("a count")))
        .unwrap_or(0)
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_resumed_fails_fast_recovers_and_loses_nothing() {
    let Some(redis) = OwnRedis::start("redis_stopped_then_resumed") else {
        return;
    };
    let (store, chain) = counting_on(&redis).await;
    for id in 1..=20 {
        deliver(&chain, id).await;
    }

    // Stopped (SIGSTOP): the socket stays open, nothing answers.
    redis.signal("STOP");
    let started = Instant::now();
    // Bounded here too, so that a store without a deadline fails this test instead of hanging it.
    let error = tokio::time::timeout(Duration::from_secs(10), store.load("Counter:7:7"))
        .await
        .expect("the store gave up within its deadline")
        .expect_err("no answer");
    let waited = started.elapsed();
    assert!(waited < TIMEOUT * 3, "failed after {waited:?}");
    assert!(
        matches!(
            error,
            StoreError::Backend {
                op: StoreOp::Load,
                ..
            }
        ),
        "{error}"
    );
    let outage = tokio::spawn({
        let chain = chain.clone();
        async move {
            let mut failed = 0;
            for id in 21..=40 {
                failed += deliver(&chain, id).await.0;
            }
            failed
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage lasts this long
    redis.signal("CONT");
    let resumed = Instant::now();
    let failed = outage.await.expect("no panic");
    let recovered = resumed.elapsed();

    let stored = stored_count(&store).await;
    eprintln!(
        "faults::redis SIGSTOP 2 s: first error after {waited:?}, {failed} failed deliveries, all 40 acknowledged {recovered:?} after SIGCONT, stored {stored}"
    );
    assert!(failed > 0, "the outage was seen");
    assert!(
        recovered < Duration::from_secs(5),
        "recovered {recovered:?} after SIGCONT"
    );
    assert_eq!(stored, 40, "stored equals acknowledged, exactly");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_is_reconnected_within_seconds() {
    let Some(redis) = OwnRedis::start("redis_killed_and_restarted") else {
        return;
    };
    let (store, chain) = counting_on(&redis).await;
    deliver(&chain, 1).await;

    // Killed: nothing is kept on disk, so the restarted server starts empty.
    let port = redis.kill();
    let started = Instant::now();
    store.load("Counter:7:7").await.expect_err("gone");
    let failed_after = started.elapsed();
    assert!(failed_after < TIMEOUT * 3, "failed after {failed_after:?}");
    let redis = OwnRedis::on(port, "redis_killed_and_restarted").expect("restarts");
    let back = Instant::now();
    let (failed, _) = deliver(&chain, 2).await;
    let recovered = back.elapsed();
    eprintln!(
        "faults::redis killed and restarted: first error after {failed_after:?}, served again {recovered:?} after the restart ({failed} failed deliveries)"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "recovered {recovered:?} after the restart"
    );
    assert_eq!(
        stored_count(&store).await,
        1,
        "the new server holds update 2"
    );
    drop(redis);
}

/// Redis forgets its scripts on a restart or a `SCRIPT FLUSH`: a patch the server answers
/// with `NOSCRIPT` loads the patch script and is applied, on its own and (waiting for
/// replicas) in the pipeline with `WAIT`. On a server of the test's own, so no other test
/// loads the script in between: its `EVALSHA` error count shows each patch met `NOSCRIPT`.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_server_that_forgot_the_patch_script_is_given_it_by_the_next_patch() {
    use typed_session::store::Patch;
    let Some(redis) = OwnRedis::start("a_server_that_forgot_the_patch_script") else {
        return;
    };
    let store = RedisStore::connect_with_timeout(&redis.url(), TIMEOUT)
        .await
        .expect("connect");
    let client = typed_session::redis::Client::open(redis.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let write = |value: &'static str, version: u64| {
        Patch::new()
            .set_field("a", value)
            .expect_version("a", version)
    };
    // A new server has never seen the script.
    store.apply("k", &write("1", 0)).await.expect("applied");
    let flush = typed_session::redis::cmd("SCRIPT").arg("FLUSH").to_owned();
    let () = flush.query_async(&mut raw).await.expect("SCRIPT FLUSH");
    store.apply("k", &write("2", 1)).await.expect("applied");
    let () = flush.query_async(&mut raw).await.expect("SCRIPT FLUSH");
    // This Redis has no replica: the write is refused for that, after it ran.
    let waiting = store
        .clone()
        .wait_for_replicas(1, Duration::from_millis(50));
    let error = waiting
        .apply("k", &write("3", 2))
        .await
        .expect_err("no replica");
    assert!(
        error
            .to_string()
            .contains("0 of 1 replicas acknowledged it"),
        "{error}"
    );
    let record = store.load("k").await.expect("load").expect("exists");
    assert_eq!((record.get("a"), record.version("a")), (Some("3"), 3));
    let stats: String = typed_session::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .expect("INFO");
    let evalsha = stats
        .lines()
        .find(|line| line.starts_with("cmdstat_evalsha:"))
        .unwrap_or_default();
    assert!(
        evalsha.contains("calls=6,") && evalsha.contains("failed_calls=3"),
        "three patches, each answered NOSCRIPT once and then applied: {evalsha}"
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn connecting_to_a_port_where_nothing_listens_fails_within_the_deadline() {
    let port = free_port();
    let started = Instant::now();
    let error = RedisStore::connect_with_timeout(&format!("redis://127.0.0.1:{port}"), TIMEOUT)
        .await
        .expect_err("nothing listens");
    let waited = started.elapsed();
    eprintln!("faults::redis connect to a dead port: {error} after {waited:?}");
    assert!(waited <= TIMEOUT + Duration::from_millis(500), "{waited:?}");
}

/// Another client holds the row of one key locked (a long transaction, an admin's `SELECT ...
/// FOR UPDATE`): that key's updates fail within the store's deadline instead of holding pool
/// connections, and other keys keep being served meanwhile.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_row_locked_by_another_client_fails_its_key_fast_and_serves_the_others() {
    use typed_session::PostgresStore;
    use typed_session::store::SqlOptions;

    let Some(url) = common::server_url("POSTGRES_URL", "postgres", "faults::row_lock") else {
        return;
    };
    let table = format!(
        "faults_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    let options = SqlOptions::default().max_connections(4).timeout(TIMEOUT);
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect")
        .with_table(&table)
        .expect("a table name");
    store.migrate().await.expect("migrate");
    let chain = incrementing(&SessionMiddleware::<Counter, Update>::new(store.clone()));
    chain
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("the row exists");

    let mut locker = store.pool().begin().await.expect("another client");
    typed_session::sqlx::query(&format!("SELECT 1 FROM {table} WHERE key = $1 FOR UPDATE"))
        .bind("Counter:7:7".as_bytes())
        .execute(&mut *locker)
        .await
        .expect("locked");

    // More updates of the locked key than the pool has connections.
    let locked: Vec<_> = (0..8)
        .map(|i| {
            let chain = chain.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = chain.run_update(Update::text(100 + i, 7, 7, "+1")).await;
                (outcome.is_err(), started.elapsed())
            })
        })
        .collect();
    let mut slowest_other = Duration::ZERO;
    for user in 0..20 {
        let started = Instant::now();
        chain
            .run_update(Update::text(1_000 + user, 50 + user, 50 + user, "+1"))
            .await
            .expect("another key is served");
        slowest_other = slowest_other.max(started.elapsed());
    }
    let mut slowest_locked = Duration::ZERO;
    for update in locked {
        // Bounded here too: without a lock deadline these wait for the lock, which the test
        // releases only after them.
        let (failed, took) = tokio::time::timeout(Duration::from_secs(10), update)
            .await
            .expect("the locked key's update gave up within the deadline")
            .expect("no panic");
        assert!(failed, "an update of the locked key cannot have saved");
        slowest_locked = slowest_locked.max(took);
    }
    locker.rollback().await.expect("unlocked");
    chain
        .run_update(Update::text(200, 7, 7, "+1"))
        .await
        .expect("served again once unlocked");
    eprintln!(
        "faults::postgres row lock: 8 updates of the locked key failed within {slowest_locked:?}; 20 updates of other keys meanwhile, the slowest {slowest_other:?}"
    );
    assert!(slowest_locked < TIMEOUT * 4, "{slowest_locked:?}");
    assert!(slowest_other < TIMEOUT * 4, "{slowest_other:?}");
    let _ = typed_session::sqlx::query(&format!("DROP TABLE {table}"))
        .execute(store.pool())
        .await;
}

/// Another connection (another process, a backup, `sqlite3` in a shell) holds the database's
/// write lock: the update waiting for it waits off the async runtime, so a task on the same
/// current-thread runtime keeps running meanwhile, and the update saves once the lock is gone.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "current_thread")]
async fn a_locked_sqlite_file_does_not_stall_the_runtime() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use typed_session::SqliteStore;

    let path = std::env::temp_dir().join(format!("typed-session-locked-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await.expect("open");
    store.migrate().await.expect("migrate");
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let chain = incrementing(&sessions);
    deliver(&chain, 1).await;

    let (locked, unlock) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let (locked_tx, locked_rx) = locked;
    let (unlock_tx, unlock_rx) = unlock;
    let locker = std::thread::spawn({
        let path = path.clone();
        move || {
            let other =
                typed_session::rusqlite::Connection::open(&path).expect("another connection");
            other
                .execute_batch("BEGIN IMMEDIATE")
                .expect("the write lock");
            locked_tx.send(()).expect("the test waits");
            let _ = unlock_rx.recv();
            other.execute_batch("COMMIT").expect("released");
        }
    });
    locked_rx.recv().expect("locked");

    let ticks = std::sync::Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = std::sync::Arc::clone(&ticks);
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let update = tokio::spawn({
        let chain = chain.clone();
        async move { chain.run_update(Update::text(2, 7, 7, "+1")).await }
    });
    // The runtime keeps ticking while the update waits for the lock...
    let started = Instant::now();
    while ticks.load(Ordering::Relaxed) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the runtime stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!update.is_finished(), "the update waits for the lock");
    // ...and the update saves once the lock is released.
    unlock_tx.send(()).expect("the locker waits");
    update
        .await
        .expect("no panic")
        .expect("saved after the lock");
    locker.join().expect("the locker");
    ticker.abort();
    let record = store
        .load("Counter:7:7")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(record["count"], "2");
    common::remove_sqlite_file(&path);
}

/// A MongoDB that is not there: the first call fails within the deadline (the driver alone
/// would wait 30 s to select a server), and the error says what was tried.
#[cfg(feature = "mongodb")]
#[tokio::test]
async fn a_mongodb_that_is_not_there_fails_a_call_within_the_deadline() {
    use typed_session::{MongoStore, Store};

    let port = free_port();
    let store =
        MongoStore::connect_with_timeout(&format!("mongodb://127.0.0.1:{port}"), "faults", TIMEOUT)
            .await
            .expect("the client is lazy");
    let started = Instant::now();
    let error = store
        .load("Counter:7:7")
        .await
        .expect_err("nothing listens");
    let waited = started.elapsed();
    eprintln!("faults::mongodb nothing listening: {error} after {waited:?}");
    assert!(waited < TIMEOUT * 3, "{waited:?}");
}
