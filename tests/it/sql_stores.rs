//! What is particular to the SQL stores: expiry against a controlled clock and the sweep
//! ("expiry"), explicit idempotent migration and validated table names ("migration"), a given pool used as
//! it is ("a given pool or client"), and read errors that are errors ("read errors are errors").
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use crate::common;

#[cfg(any(feature = "postgres", feature = "mysql"))]
use common::server_url;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use typed_session::store::Patch;
use typed_session::{Store, StoreError};

fn one_field(ttl: Option<Duration>) -> Patch<'static> {
    Patch::new().set_field("count", "1").with_ttl(ttl)
}

fn unique_table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Runs the checks shared by the SQL stores; `make(table, clock)` builds a store.
macro_rules! sql_store_tests {
    ($module:ident, $store:ty, $make:path) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn expiry_follows_the_clock_and_sweep_deletes_expired_rows() {
                let now = Arc::new(AtomicI64::new(1_000_000));
                let clock = Arc::clone(&now);
                let Some(store) = $make("expiry_follows_the_clock_and_sweep_deletes_expired_rows", &unique_table("ts_expiry"), move || clock.load(Ordering::SeqCst)).await else { return };
                store.migrate().await.expect("migrate");
                store.apply("short", &one_field(Some(Duration::from_secs(10)))).await.expect("apply");
                store.apply("forever", &one_field(None)).await.expect("apply");

                now.fetch_add(9_999, Ordering::SeqCst);
                assert!(store.load("short").await.expect("load").is_some());
                now.fetch_add(2, Ordering::SeqCst);
                assert_eq!(store.load("short").await.expect("load"), None);
                assert_eq!(store.sweep().await.expect("sweep"), 1);
                assert!(store.load("forever").await.expect("load").is_some());
            }

            #[tokio::test]
            async fn expiry_slides_on_every_write() {
                let now = Arc::new(AtomicI64::new(1_000_000));
                let clock = Arc::clone(&now);
                let Some(store) = $make("expiry_slides_on_every_write", &unique_table("ts_sliding"), move || clock.load(Ordering::SeqCst)).await else { return };
                store.migrate().await.expect("migrate");
                let ttl = Some(Duration::from_secs(10));
                store.apply("k", &one_field(ttl)).await.expect("apply");
                now.fetch_add(8_000, Ordering::SeqCst);
                store.apply("k", &one_field(ttl)).await.expect("apply");
                now.fetch_add(8_000, Ordering::SeqCst);
                assert!(store.load("k").await.expect("load").is_some());
                assert_eq!(store.sweep().await.expect("sweep"), 0);
            }

            /// "Expiry": the middleware's conditional write leaves the expiry as it is without a
            /// ttl, and renews it with one (the statement names `expires_at` only then).
            #[tokio::test]
            async fn a_conditional_write_without_a_ttl_keeps_the_expiry_and_one_with_a_ttl_renews_it() {
                let now = Arc::new(AtomicI64::new(1_000_000));
                let clock = Arc::clone(&now);
                let Some(store) = $make("a_conditional_write_without_a_ttl_keeps_the_expiry_and_one_with_a_ttl_renews_it", &unique_table("ts_cond"), move || clock.load(Ordering::SeqCst)).await else { return };
                store.migrate().await.expect("migrate");
                let ttl = Some(Duration::from_secs(10));
                let write = |value: &'static str, version: u64, ttl| {
                    Patch::new().set_field("count", value).expect_version("count", version).with_ttl(ttl)
                };
                for key in ["kept", "renewed"] {
                    store.apply(key, &write("1", 0, ttl)).await.expect("first write");
                }
                now.fetch_add(8_000, Ordering::SeqCst);
                store.apply("kept", &write("2", 1, None)).await.expect("no ttl");
                store.apply("renewed", &write("2", 1, ttl)).await.expect("ttl");
                now.fetch_add(3_000, Ordering::SeqCst);
                assert_eq!(store.load("kept").await.expect("load"), None, "expired 10 s after its first write");
                let renewed = store.load("renewed").await.expect("load").expect("renewed at 8 s");
                assert_eq!(renewed.get("count"), Some("2"));
            }

            /// Renewed on access, a session only read lives on; renewed on write, it expires a
            /// term after its last write. The store's clock is moved, the middleware's is not.
            #[tokio::test]
            async fn a_read_renews_the_expiry_on_access_and_not_on_write() {
                use typed_session::telegram::Update;
                use typed_session::{Chain, Renewal, SessionMiddleware};

                let now = Arc::new(AtomicI64::new(1_000_000));
                let clock = Arc::clone(&now);
                let Some(store) = $make("a_read_renews_the_expiry_on_access_and_not_on_write", &unique_table("ts_renewal"), move || clock.load(Ordering::SeqCst)).await else { return };
                store.migrate().await.expect("migrate");
                let store = Arc::new(store);
                let ttl = Duration::from_secs(60);
                for (user, renewal) in [(1, Renewal::OnWrite), (2, Renewal::OnAccess)] {
                    let key = format!("Counter:{user}:{user}");
                    store.apply(&key, &one_field(Some(ttl))).await.expect("apply");
                    let sessions = SessionMiddleware::<common::Counter, Update>::builder(Arc::clone(&store))
                        .ttl(Some(ttl))
                        .renewal(renewal)
                        .build();
                    let read = Chain::new().with(sessions.clone()).handler(|ctx| Box::pin(async move {
                        assert_eq!(ctx.session_of::<common::Counter>().await?.count(), 1);
                        Ok(())
                    }));
                    now.store(1_040_000, Ordering::SeqCst);
                    read.run_update(Update::text(user, user, user, "read")).await.expect("read");
                    now.store(1_080_000, Ordering::SeqCst);
                    let alive = store.load(&key).await.expect("load").is_some();
                    assert_eq!(alive, renewal == Renewal::OnAccess, "{renewal:?}: 80 s after the write, read at 40 s");
                    now.store(1_000_000, Ordering::SeqCst);
                }
            }

            #[tokio::test]
            async fn migrate_is_idempotent() {
                let Some(store) = $make("migrate_is_idempotent", &unique_table("ts_migrate"), || 0).await else { return };
                store.migrate().await.expect("first");
                store.migrate().await.expect("second");
                store.apply("k", &one_field(None)).await.expect("apply");
                store.migrate().await.expect("third");
                assert!(store.load("k").await.expect("load").is_some(), "migrate keeps data");
            }

            #[tokio::test]
            async fn a_read_from_a_missing_table_is_an_error_not_an_empty_session() {
                let Some(store) = $make("a_read_from_a_missing_table_is_an_error_not_an_empty_session", &unique_table("ts_never_migrated"), || 0).await else { return };
                let error = store.load("k").await.expect_err("no table");
                assert!(matches!(error, StoreError::Backend { ref key, .. } if key == "k"), "{error}");
            }
        }
    };
}

#[tokio::test]
#[cfg(feature = "sqlite")]
async fn table_names_that_are_not_plain_identifiers_are_rejected() {
    let store = typed_session::SqliteStore::connect("sqlite::memory:")
        .await
        .expect("open");
    for bad in [
        "sessions; DROP TABLE x",
        "",
        "1abc",
        "a-b",
        "\"quoted\"",
        &"x".repeat(64),
    ] {
        let error = store.clone().with_table(bad).expect_err("rejected");
        assert!(
            matches!(error, StoreError::Config { .. }),
            "{bad:?}: {error}"
        );
    }
    assert!(store.with_table("bot_sessions_v2").is_ok());
}

#[tokio::test]
#[cfg(feature = "sqlite")]
async fn a_store_uses_the_connection_it_is_given_without_reopening() {
    // An in-memory database exists only in its connection: if the store opened its own, the
    // row would not be visible through the caller's.
    let connection = typed_session::rusqlite::Connection::open_in_memory().expect("open");
    let store = typed_session::SqliteStore::from_connection(connection);
    store.migrate().await.expect("migrate");
    store.apply("k", &one_field(None)).await.expect("apply");
    let data: String = store
        .connection()
        .query_row(
            "SELECT data FROM typed_sessions WHERE key = 'k'",
            [],
            |row| row.get(0),
        )
        .expect("the row, through the same connection");
    assert_eq!(data, r#"{"count":1}"#);
}

#[cfg(feature = "sqlite")]
async fn sqlite(
    _test: &str,
    table: &str,
    clock: impl Fn() -> i64 + Send + Sync + 'static,
) -> Option<typed_session::SqliteStore> {
    let store = typed_session::SqliteStore::connect("sqlite::memory:")
        .await
        .expect("open");
    Some(store.with_table(table).expect("valid").with_clock(clock))
}
#[cfg(feature = "sqlite")]
sql_store_tests!(sqlite, typed_session::SqliteStore, sqlite);

#[cfg(feature = "postgres")]
async fn postgres(
    test: &str,
    table: &str,
    clock: impl Fn() -> i64 + Send + Sync + 'static,
) -> Option<typed_session::PostgresStore> {
    let url = server_url("POSTGRES_URL", "postgres", test)?;
    let store = typed_session::PostgresStore::connect(&url)
        .await
        .expect("connect");
    Some(store.with_table(table).expect("valid").with_clock(clock))
}
#[cfg(feature = "postgres")]
sql_store_tests!(postgres, typed_session::PostgresStore, postgres);

#[cfg(feature = "mysql")]
async fn mysql(
    test: &str,
    table: &str,
    clock: impl Fn() -> i64 + Send + Sync + 'static,
) -> Option<typed_session::MySqlStore> {
    let url = server_url("MYSQL_URL", "mysql", test)?;
    let store = typed_session::MySqlStore::connect(&url)
        .await
        .expect("connect");
    Some(store.with_table(table).expect("valid").with_clock(clock))
}
#[cfg(feature = "mysql")]
sql_store_tests!(mysql, typed_session::MySqlStore, mysql);

/// SQLite keeps the text of a few dozen patch statements, one per shape (how many fields a
/// patch sets, removes and expects); a patch of any other shape is written for it alone, and
/// applies the same.
#[tokio::test]
#[cfg(feature = "sqlite")]
async fn sqlite_applies_patches_of_more_shapes_than_it_keeps_statements_for() {
    let store = typed_session::SqliteStore::connect("sqlite::memory:")
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    let names: Vec<String> = (0..80).map(|i| format!("f{i}")).collect();
    for n in 1..=names.len() {
        let key = format!("k{n}");
        let mut create = Patch::new();
        let mut update = Patch::new();
        for name in &names[..n] {
            create = create.set_field(name, "1").expect_version(name, 0);
            update = update.set_field(name, "2").expect_version(name, 1);
        }
        store.apply(&key, &create).await.expect("created");
        store.apply(&key, &update).await.expect("updated");
        let record = store.load(&key).await.expect("load").expect("stored");
        assert_eq!(record.fields.len(), n, "{key}");
        for name in &names[..n] {
            assert_eq!(record.get(name), Some("2"), "{key} {name}");
            assert_eq!(record.version(name), 2, "{key} {name}");
        }
    }
}

#[tokio::test]
#[cfg(feature = "sqlite")]
async fn sessions_in_a_sqlite_file_survive_a_restart() {
    use typed_session::telegram::Update;
    use typed_session::{Chain, Session, SessionMiddleware};

    #[derive(Session)]
    struct Visits {
        count: u64,
    }

    let path =
        std::env::temp_dir().join(format!("typed-session-restart-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    for run in 1..=2i64 {
        // A fresh store, pool and middleware each time: nothing survives but the file.
        let store = typed_session::SqliteStore::connect(&url)
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        let chain = Chain::new()
            .with(SessionMiddleware::<Visits, Update>::new(store.clone()))
            .handler(|ctx| {
                Box::pin(async move {
                    ctx.session().await?.update_count(|c| *c += 1);
                    Ok(())
                })
            });
        for i in 0..3 {
            chain
                // Update ids are unique per bot, across restarts too.
                .run_update(Update::text(run * 10 + i, 5, 5, "hi"))
                .await
                .expect("update");
        }
        let stored = store
            .load("Visits:5:5")
            .await
            .expect("load")
            .expect("exists");
        assert_eq!(stored["count"], (3 * run).to_string(), "run {run}");
        drop(store);
    }
    common::remove_sqlite_file(&path);
}

/// `SqliteStore::with_durability` sets what SQLite waits for before a commit returns: the
/// setting is read back from the connection the store writes on.
#[tokio::test]
#[cfg(feature = "sqlite")]
async fn sqlite_durability_is_the_synchronous_setting_of_the_connection_it_writes_on() {
    use typed_session::store::Durability;

    let path = std::env::temp_dir().join(format!(
        "typed-session-durability-{}.db",
        std::process::id()
    ));
    let url = format!("sqlite://{}", path.display());
    let synchronous = |store: &typed_session::SqliteStore| -> i64 {
        store
            .connection()
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("read synchronous")
    };
    // SQLite's codes: 1 NORMAL, 2 FULL.
    let store = typed_session::SqliteStore::connect(&url)
        .await
        .expect("open");
    assert_eq!(synchronous(&store), 1, "the default");
    let store = store.with_durability(Durability::Full).expect("full");
    assert_eq!(synchronous(&store), 2);
    store.migrate().await.expect("migrate");
    store
        .apply("1:1", &one_field(None))
        .await
        .expect("a patch commits under FULL");
    assert!(store.load("1:1").await.expect("load").is_some());
    let store = store.with_durability(Durability::Normal).expect("normal");
    assert_eq!(synchronous(&store), 1);
    drop(store);
    common::remove_sqlite_file(&path);
}

/// `url` with a host where nothing listens put before its own.
#[cfg(feature = "postgres")]
fn with_a_dead_host_first(url: &str) -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    match rest.split_once('@') {
        Some((user, hosts)) => format!("{scheme}://{user}@127.0.0.1:{dead},{hosts}"),
        None => format!("{scheme}://127.0.0.1:{dead},{rest}"),
    }
}

#[tokio::test]
#[cfg(feature = "postgres")]
async fn a_postgres_url_of_several_hosts_writes_to_the_one_that_accepts_writes() {
    let test = "a_postgres_url_of_several_hosts_writes_to_the_one_that_accepts_writes";
    let Some(url) = server_url("POSTGRES_URL", "postgres", test) else {
        return;
    };
    let url = with_a_dead_host_first(&url);
    let store = typed_session::PostgresStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    store.migrate().await.expect("migrate");
    let key = common::unique("several-hosts");
    store.apply(&key, &one_field(None)).await.expect("apply");
    let record = store.load(&key).await.expect("load").expect("the record");
    assert_eq!(record.get("count"), Some("1"));
    store.delete(&key).await.expect("delete");
}

#[tokio::test]
#[cfg(feature = "postgres")]
async fn a_postgres_url_whose_hosts_are_all_down_fails_to_connect_saying_so() {
    let dead =
        with_a_dead_host_first("postgres://postgres@127.0.0.1:1/test").replace(",127.0.0.1:1", "");
    let two_dead = with_a_dead_host_first(&dead);
    let error = typed_session::PostgresStore::connect(&two_dead)
        .await
        .expect_err("no host to write to");
    assert!(
        error.to_string().contains("no host accepts writes"),
        "{error}"
    );
    let refused = typed_session::PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1,127.0.0.1:2/test?target_session_attrs=read-only",
    )
    .await
    .expect_err("a store writes");
    assert!(matches!(refused, StoreError::Config { .. }), "{refused}");
}

/// A TCP proxy in front of a database server, a test double for the network: it forwards
/// both ways and counts the pings the client sends (messages of exactly the bytes `ping`).
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct PingCounter {
    /// The server's URL with the proxy's address in place of the server's.
    url: String,
    /// Each message the client sent, in order: whether it was a ping.
    messages: Arc<std::sync::Mutex<Vec<bool>>>,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl PingCounter {
    async fn start(url: &str, ping: &'static [u8]) -> PingCounter {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (user, rest) = rest.split_once('@').expect("a user");
        let (server, path) = rest.split_once('/').expect("a database");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counted, server) = (Arc::clone(&messages), server.to_owned());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = upstream.into_split();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
                        let is_ping = &buffer[..read] == ping;
                        counted.lock().expect("not poisoned").push(is_ping);
                        if to_server.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
            }
        });
        PingCounter {
            url: format!("{scheme}://{user}@127.0.0.1:{port}/{path}"),
            messages,
        }
    }

    fn messages(&self) -> Vec<bool> {
        self.messages.lock().expect("not poisoned").clone()
    }

    fn pings(&self) -> u64 {
        self.messages().iter().filter(|&&ping| ping).count() as u64
    }
}

/// Over one pooled connection, 20 patches one after the other: sqlx pings the connection as
/// each call gives it back, and taking one used a moment ago costs no ping (it used to: a
/// second round trip per call, 40 pings for the 20). Taking one left idle for longer than
/// the store trusts it does cost one, before the call.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn a_call_pings_only_as_it_gives_its_connection_back(
    store: &impl Store,
    proxy: &PingCounter,
) {
    const CALLS: u64 = 20;
    let key = common::unique("pings");
    // The migration's connection may still be pinging as it is given back: one more.
    let before = proxy.pings();
    for count in 1..=CALLS {
        let patch = Patch::new().set_field("count", count.to_string());
        store.apply(&key, &patch).await.expect("apply");
    }
    let pings = proxy.pings() - before;
    assert!(
        pings <= CALLS + 1,
        "{pings} pings over {CALLS} calls: one as each call gives its connection back, none as it takes it"
    );
    // Idle past the 10 s the store trusts a connection for: checked before it is used.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let sent = proxy.messages().len();
    store.delete(&key).await.expect("delete");
    assert_eq!(
        proxy.messages().get(sent),
        Some(&true),
        "a connection idle for 11 s is pinged before its call"
    );
}

/// A pool of one connection, so that each call takes the connection the last one gave back.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn one_connection() -> typed_session::store::SqlOptions {
    typed_session::store::SqlOptions::default().max_connections(1)
}

#[tokio::test]
#[cfg(feature = "postgres")]
async fn postgres_pings_a_pooled_connection_before_a_call_only_after_it_idled() {
    let test = "postgres_pings_a_pooled_connection_before_a_call_only_after_it_idled";
    let Some(url) = server_url("POSTGRES_URL", "postgres", test) else {
        return;
    };
    // A bare `Sync` message: sqlx's ping.
    let proxy = PingCounter::start(&url, b"S\0\0\0\x04").await;
    let store = typed_session::PostgresStore::connect_with(&proxy.url, one_connection())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", proxy.url));
    store.migrate().await.expect("migrate");
    a_call_pings_only_as_it_gives_its_connection_back(&store, &proxy).await;
}

#[tokio::test]
#[cfg(feature = "mysql")]
async fn mysql_pings_a_pooled_connection_before_a_call_only_after_it_idled() {
    let test = "mysql_pings_a_pooled_connection_before_a_call_only_after_it_idled";
    let Some(url) = server_url("MYSQL_URL", "mysql", test) else {
        return;
    };
    // A `COM_PING` packet: length 1, sequence 0, command 0x0e.
    let proxy = PingCounter::start(&url, b"\x01\0\0\0\x0e").await;
    let store = typed_session::MySqlStore::connect_with(&proxy.url, one_connection())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", proxy.url));
    store.migrate().await.expect("migrate");
    a_call_pings_only_as_it_gives_its_connection_back(&store, &proxy).await;
}
