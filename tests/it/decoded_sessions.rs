//! "Decoded between updates": with a store that tells revisions (the memory store), a session
//! no update holds stays decoded, and the next update of its key takes it without a load while
//! the stored record is unchanged; any other change of the record makes it load again. With
//! `Freshness::Cached`, sessions stay decoded on a store that tells no revisions too, and a
//! write based on a value another writer changed is refused and runs again.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{Counter, CounterAccess, ProbeStore, incrementing, stored};
use typed_session::store::{Patch, Revision};
use typed_session::telegram::Update;
use typed_session::{Freshness, MemoryStore, SessionMiddleware, Store};

#[tokio::test]
async fn the_next_update_of_a_key_takes_the_decoded_session_without_a_load() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = incrementing(&sessions);
    for id in 1..=3 {
        chain
            .run_update(Update::text(id, 7, 7, "+1"))
            .await
            .expect("update");
    }
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(3));
    assert_eq!(
        sessions.stats().loads(),
        1,
        "loaded by the first update only"
    );
    assert_eq!((sessions.live_sessions(), sessions.idle_sessions()), (0, 1));
}

#[tokio::test]
async fn a_write_by_another_middleware_on_the_same_store_is_seen_by_the_next_update() {
    let memory = MemoryStore::new();
    let a = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let b = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (chain_a, chain_b) = (incrementing(&a), incrementing(&b));
    chain_a
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("a");
    chain_b
        .run_update(Update::text(2, 7, 7, "+1"))
        .await
        .expect("b");
    chain_a
        .run_update(Update::text(3, 7, 7, "+1"))
        .await
        .expect("a again");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(3),
        "no increment lost"
    );
    assert_eq!(a.stats().loads(), 2, "the record changed: read again");
    assert_eq!(
        a.stats().conflicts(),
        0,
        "read again before writing, not after a conflict"
    );
}

#[tokio::test]
async fn a_record_deleted_or_rewritten_between_updates_is_read_again() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = incrementing(&sessions);
    chain
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("update");
    memory.delete("Counter:7:7").await.expect("delete");
    chain
        .run_update(Update::text(2, 7, 7, "+1"))
        .await
        .expect("update");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(1),
        "counted from the default"
    );
    let patch = Patch::new().set_field("count", "40");
    memory.apply("Counter:7:7", &patch).await.expect("rewrite");
    chain
        .run_update(Update::text(3, 7, 7, "+1"))
        .await
        .expect("update");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(41));
    assert_eq!(sessions.stats().loads(), 3);
}

#[tokio::test]
async fn at_most_ten_thousand_are_kept_and_the_one_idle_longest_goes_first() {
    const KEPT: i64 = 10_000;
    let sessions = SessionMiddleware::<Counter, Update>::new(MemoryStore::new());
    let chain = incrementing(&sessions);
    for user in 0..=KEPT {
        chain
            .run_update(Update::text(user + 1, user, user, "+1"))
            .await
            .expect("update");
    }
    assert_eq!(sessions.idle_sessions(), KEPT as usize);
    let loads = sessions.stats().loads();
    chain
        .run_update(Update::text(KEPT + 2, KEPT, KEPT, "+1"))
        .await
        .expect("newest");
    assert_eq!(sessions.stats().loads(), loads, "the newest is still kept");
    chain
        .run_update(Update::text(KEPT + 3, 0, 0, "+1"))
        .await
        .expect("oldest");
    assert_eq!(
        sessions.stats().loads(),
        loads + 1,
        "the oldest was dropped"
    );
    assert_eq!(sessions.idle_sessions(), KEPT as usize);
}

#[tokio::test]
async fn keep_decoded_bounds_the_idle_sessions_and_zero_keeps_none() {
    for keep in [0, 2] {
        let sessions = SessionMiddleware::<Counter, Update>::builder(MemoryStore::new())
            .keep_decoded(keep)
            .build();
        let chain = incrementing(&sessions);
        for user in 0..3 {
            chain
                .run_update(Update::text(user + 1, user, user, "+1"))
                .await
                .expect("update");
        }
        assert_eq!(sessions.idle_sessions(), keep, "keep_decoded({keep})");
        let loads = sessions.stats().loads();
        chain
            .run_update(Update::text(10, 2, 2, "+1"))
            .await
            .expect("the newest again");
        let expected = if keep == 0 { loads + 1 } else { loads };
        assert_eq!(sessions.stats().loads(), expected, "keep_decoded({keep})");
    }
}

#[tokio::test]
async fn a_store_that_tells_no_revision_is_read_by_every_update() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = incrementing(&sessions);
    for id in 1..=3 {
        chain
            .run_update(Update::text(id, 7, 7, "+1"))
            .await
            .expect("update");
    }
    assert_eq!(probe.loads(), 3);
    assert_eq!(sessions.idle_sessions(), 0);
}

/// The contract `Store::revision` documents, on the memory store.
#[tokio::test(start_paused = true)]
async fn the_memory_store_tells_each_change_of_a_record_by_its_revision() {
    let store = MemoryStore::new();
    assert_eq!(store.revision("k"), Revision::Absent);
    let renew = Patch::new().with_ttl(Some(Duration::from_secs(5)));
    store.apply("k", &renew).await.expect("renew");
    assert_eq!(
        store.revision("k"),
        Revision::Absent,
        "a renewal creates nothing"
    );

    store
        .apply("k", &Patch::new().set_field("a", "1"))
        .await
        .expect("create");
    let created = store.revision("k");
    assert!(created.follows(Revision::Absent));
    store
        .apply("k", &Patch::new().set_field("a", "2"))
        .await
        .expect("write");
    let written = store.revision("k");
    assert!(written.follows(created));
    store.apply("k", &renew).await.expect("renew");
    assert!(
        store.revision("k").follows(written),
        "a renewal is an apply"
    );
    let renewed = store.revision("k");

    let stale = Patch::new().set_field("a", "3").expect_version("a", 1);
    assert!(store.apply("k", &stale).await.is_err(), "a conflict");
    assert_eq!(
        store.revision("k"),
        renewed,
        "a refused patch changes nothing"
    );

    store.delete("k").await.expect("delete");
    assert_eq!(store.revision("k"), Revision::Absent);
    store
        .apply("k", &Patch::new().set_field("a", "1"))
        .await
        .expect("again");
    let again = store.revision("k");
    assert!(again.follows(Revision::Absent));
    assert_ne!(again, created, "a record created anew has another life");

    store.apply("k", &renew).await.expect("expiry");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(store.revision("k"), Revision::Absent, "expired");
}

/// Delivers `update` until it is acknowledged, as Telegram does after an error status;
/// returns how many deliveries it took.
async fn deliver(chain: &typed_session::Chain<Update>, update: Update) -> usize {
    for delivery in 1..=10 {
        let ctx = typed_session::Context::new(update.clone());
        match chain.run(&ctx).await {
            Ok(()) => return delivery,
            Err(_) if ctx.must_retry() => {}
            Err(error) => panic!("update failed for good: {error}"),
        }
    }
    panic!("update never acknowledged")
}

/// A middleware of `Freshness::Cached` over `store`.
fn cached(store: Arc<ProbeStore>) -> SessionMiddleware<Counter, Update> {
    SessionMiddleware::<Counter, Update>::builder(store)
        .freshness(Freshness::Cached)
        .build()
}

#[tokio::test]
async fn cached_sessions_cost_one_round_trip_per_writing_update_on_a_store_that_tells_no_revisions()
{
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let sessions = cached(Arc::clone(&probe));
    let chain = incrementing(&sessions);
    for id in 1..=10 {
        assert_eq!(deliver(&chain, Update::text(id, 7, 7, "+1")).await, 1);
    }
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(10));
    let (loads, applies) = (probe.loads.load(SeqCst), probe.applies.load(SeqCst));
    assert_eq!(
        (loads, applies),
        (1, 10),
        "loaded by the first update only, one patch per update"
    );

    // Checked (the default) on the same kind of store loads for every update.
    let probe = ProbeStore::new(MemoryStore::new());
    let checked = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = incrementing(&checked);
    for id in 1..=10 {
        deliver(&chain, Update::text(id, 7, 7, "+1")).await;
    }
    assert_eq!(probe.loads.load(SeqCst), 10);
}

#[tokio::test]
async fn a_cached_session_another_writer_changed_is_refused_and_runs_again_on_the_record_the_refusal_carried()
 {
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let a = cached(Arc::clone(&probe));
    let b = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (chain_a, chain_b) = (incrementing(&a), incrementing(&b));
    deliver(&chain_a, Update::text(1, 7, 7, "+1")).await;
    deliver(&chain_b, Update::text(2, 7, 7, "+1")).await;
    // `a` still holds count 1: its increment is refused once, and saved on the refused
    // patch's record, with no load.
    assert_eq!(deliver(&chain_a, Update::text(3, 7, 7, "+1")).await, 2);
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(3),
        "no increment lost"
    );
    assert_eq!(a.stats().conflicts(), 1);
    assert_eq!(
        probe.loads.load(SeqCst),
        1,
        "the refusal carried the record"
    );
}

/// A chain on `sessions` whose handler only reads `count`, and where it puts what it read.
fn read_count(
    sessions: &SessionMiddleware<Counter, Update>,
) -> (
    typed_session::Chain<Update>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let chain = typed_session::Chain::new().with(sessions.clone()).handler({
        let seen = Arc::clone(&seen);
        move |ctx| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                seen.store(ctx.session().await?.count(), SeqCst);
                Ok(())
            })
        }
    });
    (chain, seen)
}

/// The price of `Freshness::Cached`, as documented: an update that only reads can see a value
/// another writer changed since this process last read or wrote it.
#[tokio::test]
async fn a_read_only_update_on_a_cached_session_can_see_a_value_another_writer_changed() {
    let memory = MemoryStore::new();
    let a = cached(ProbeStore::new(memory.clone()));
    let checked = SessionMiddleware::<Counter, Update>::new(ProbeStore::new(memory.clone()));
    deliver(&incrementing(&a), Update::text(1, 7, 7, "+1")).await;
    let b = SessionMiddleware::<Counter, Update>::new(memory.clone());
    deliver(&incrementing(&b), Update::text(2, 7, 7, "+1")).await;
    let (chain, seen) = read_count(&a);
    deliver(&chain, Update::text(3, 7, 7, "read")).await;
    assert_eq!(seen.load(SeqCst), 1, "cached: what this process last wrote");
    let (chain, seen) = read_count(&checked);
    deliver(&chain, Update::text(4, 7, 7, "read")).await;
    assert_eq!(seen.load(SeqCst), 2, "checked: what the store holds");
}

/// SQLite tells the revisions of what its connection read and wrote, while no other
/// connection commits (ARCHITECTURE.md, "Decoded between updates").
#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    use std::path::PathBuf;
    use std::sync::atomic::AtomicI64;

    use typed_session::SqliteStore;

    /// A fresh WAL database file for `test`, opened twice: two connections, as two processes
    /// have. The first reads the time from `clock` (milliseconds).
    async fn two_connections(
        test: &str,
        clock: Arc<AtomicI64>,
    ) -> (SqliteStore, SqliteStore, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "typed-session-revisions-{test}-{}.db",
            std::process::id()
        ));
        common::remove_sqlite_file(&path);
        let url = format!("sqlite://{}", path.display());
        let one = SqliteStore::connect(&url)
            .await
            .expect("open")
            .with_clock(move || clock.load(SeqCst));
        one.migrate().await.expect("migrate");
        let two = SqliteStore::connect(&url).await.expect("open again");
        (one, two, path)
    }

    #[tokio::test]
    async fn sqlite_tells_each_change_its_connection_makes_and_nothing_once_another_commits() {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let (one, two, path) = two_connections("contract", Arc::clone(&clock)).await;
        assert_eq!(one.revision("k"), Revision::Unknown, "never read");
        assert!(one.load("k").await.expect("load").is_none());
        assert_eq!(one.revision("k"), Revision::Absent);

        let set = |value: &str| Patch::new().set_field("a", value);
        one.apply("k", &set("1")).await.expect("create");
        let created = one.revision("k");
        assert!(created.follows(Revision::Absent), "{created:?}");
        one.apply("k", &set("2").expect_version("a", 1))
            .await
            .expect("write");
        let written = one.revision("k");
        assert!(written.follows(created), "{written:?} after {created:?}");

        two.apply("k", &set("3").expect_version("a", 2))
            .await
            .expect("another connection writes");
        assert_eq!(
            one.revision("k"),
            Revision::Unknown,
            "another connection committed"
        );
        let record = one.load("k").await.expect("read again").expect("a row");
        assert_eq!(record["a"], "3");
        let reread = one.revision("k");
        assert!(
            matches!(reread, Revision::At { .. }) && reread != written,
            "{reread:?}: known again, and not the revision of another record"
        );

        let stale = set("4").expect_version("a", 2);
        assert!(one.apply("k", &stale).await.is_err(), "a conflict");
        assert_eq!(one.revision("k"), Revision::Unknown, "refused: read again");
        one.load("k").await.expect("read again");

        let ttl = Patch::new().with_ttl(Some(Duration::from_secs(5)));
        one.apply("k", &ttl).await.expect("renew");
        let renewed = one.revision("k");
        assert!(matches!(renewed, Revision::At { .. }), "{renewed:?}");
        clock.fetch_add(5_000, SeqCst);
        assert_eq!(one.revision("k"), Revision::Absent, "expired");
        one.apply("k", &set("1")).await.expect("created anew");
        let anew = one.revision("k");
        assert!(anew.follows(Revision::Absent), "{anew:?}");
        assert!(![created, written, reread, renewed].contains(&anew));

        one.delete("k").await.expect("delete");
        assert_eq!(one.revision("k"), Revision::Absent);

        one.load("k").await.expect("load");
        let _ = one.connection();
        assert_eq!(
            one.revision("k"),
            Revision::Unknown,
            "what the application does on the connection is not counted"
        );
        common::remove_sqlite_file(&path);
    }

    /// A read tells the revision of the row it read, under the connection's lock: also the
    /// first read of a key, and the first after another connection committed, where asking
    /// the revision before the read could not tell it.
    #[tokio::test]
    async fn sqlite_tells_the_revision_of_what_a_read_read() {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let (one, two, path) = two_connections("read-revision", clock).await;
        let set = |value: &str| Patch::new().set_field("a", value);
        assert_eq!(one.revision("k"), Revision::Unknown, "never read");
        let (record, absent) = one.load_with_revision("k").await.expect("load");
        assert!(record.is_none());
        assert_eq!(absent, Revision::Absent, "read: no row");

        two.apply("k", &set("1"))
            .await
            .expect("another connection creates it");
        assert_eq!(
            one.revision("k"),
            Revision::Unknown,
            "another connection committed"
        );
        let (record, read) = one.load_with_revision("k").await.expect("load");
        assert_eq!(record.expect("a row")["a"], "1");
        assert!(matches!(read, Revision::At { .. }), "{read:?}");
        assert_eq!(
            one.revision("k"),
            read,
            "what the read told is what is known"
        );
        one.apply("k", &set("2").expect_version("a", 1))
            .await
            .expect("write");
        assert!(
            one.revision("k").follows(read),
            "its own write counts on it"
        );

        two.apply("k", &set("3").expect_version("a", 2))
            .await
            .expect("another connection writes");
        let (record, again) = one.load_with_revision("k").await.expect("load");
        assert_eq!(record.expect("a row")["a"], "3");
        assert!(
            matches!(again, Revision::At { .. }) && again != read,
            "{again:?}: known, and not the revision of another record"
        );
        common::remove_sqlite_file(&path);
    }

    /// `Freshness::Cached` asks SQLite nothing before an update, as on every other store (no
    /// `data_version` check): a read-only update sees what this process last wrote, and a
    /// write on it is refused by its versions and runs again on the current record.
    #[tokio::test]
    async fn a_cached_session_on_sqlite_is_used_without_a_check() {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let (one, two, path) = two_connections("cached", clock).await;
        let store = Arc::new(one);
        let sessions = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&store))
            .freshness(Freshness::Cached)
            .build();
        let checked = SessionMiddleware::<Counter, Update>::new(Arc::clone(&store));
        // The session's first load tells the revision it read: a check could tell the entry
        // is stale.
        deliver(&incrementing(&sessions), Update::text(1, 7, 7, "+1")).await;
        assert!(store.revision("Counter:7:7").is_known());
        let record = two.load("Counter:7:7").await.expect("load").expect("a row");
        let write = Patch::new()
            .set_field("count", "5")
            .expect_version("count", record.version("count"));
        two.apply("Counter:7:7", &write)
            .await
            .expect("another connection writes");

        let (chain, seen) = read_count(&sessions);
        deliver(&chain, Update::text(2, 7, 7, "read")).await;
        assert_eq!(seen.load(SeqCst), 1, "cached: no check, what it last wrote");
        let (chain, seen) = read_count(&checked);
        deliver(&chain, Update::text(3, 7, 7, "read")).await;
        assert_eq!(
            seen.load(SeqCst),
            5,
            "checked: the other connection's write"
        );

        assert_eq!(
            deliver(&incrementing(&sessions), Update::text(4, 7, 7, "+1")).await,
            2,
            "refused once, then run again on the current record"
        );
        let record = two.load("Counter:7:7").await.expect("load").expect("a row");
        assert_eq!(record["count"], "6", "no write lost");
        assert_eq!(sessions.stats().conflicts(), 1);
        drop((sessions, checked, store, two));
        common::remove_sqlite_file(&path);
    }

    #[tokio::test]
    async fn on_sqlite_sessions_stay_decoded_and_a_write_through_another_connection_is_read_first()
    {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let (one, two, path) = two_connections("middleware", clock).await;
        let a = SessionMiddleware::<Counter, Update>::new(one.clone());
        let b = SessionMiddleware::<Counter, Update>::new(two.clone());
        let (chain_a, chain_b) = (incrementing(&a), incrementing(&b));
        for id in 1..=5 {
            chain_a
                .run_update(Update::text(id, 7, 7, "+1"))
                .await
                .expect("a");
        }
        // The first update reads the key, never read by the connection before, and learns
        // the revision of what it read in the same call: from then on it stays decoded.
        assert_eq!(a.stats().loads(), 1, "read by the first update only");
        chain_b
            .run_update(Update::text(6, 7, 7, "+1"))
            .await
            .expect("b");
        chain_a
            .run_update(Update::text(7, 7, 7, "+1"))
            .await
            .expect("a again");
        let stored = one.load("Counter:7:7").await.expect("load").expect("a row");
        assert_eq!(stored["count"], "7", "no increment lost");
        assert_eq!(a.stats().loads(), 2, "another connection wrote: read again");
        assert_eq!(
            a.stats().conflicts(),
            0,
            "read again before writing, not after a conflict"
        );
        common::remove_sqlite_file(&path);
    }

    /// Whether a connection of its own can read the database at `path`.
    fn readable_by_another_connection(path: &PathBuf) -> bool {
        let other = typed_session::rusqlite::Connection::open(path).expect("open");
        other.busy_timeout(Duration::ZERO).expect("no waiting");
        other
            .query_row("SELECT count(*) FROM typed_sessions", [], |row| {
                row.get::<_, i64>(0)
            })
            .is_ok()
    }

    #[tokio::test]
    async fn under_exclusive_locking_no_other_connection_uses_the_file_even_after_the_connection_is_lent()
     {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let (one, two, path) = two_connections("exclusive", clock).await;
        drop(two);
        assert!(readable_by_another_connection(&path), "normal locking");
        let one = one
            .with_locking(typed_session::store::Locking::Exclusive)
            .expect("the locks");
        assert!(!readable_by_another_connection(&path), "exclusive locking");

        let sessions = SessionMiddleware::<Counter, Update>::new(one.clone());
        let chain = incrementing(&sessions);
        for id in 1..=4 {
            chain
                .run_update(Update::text(id, 7, 7, "+1"))
                .await
                .expect("update");
        }
        assert_eq!(sessions.stats().loads(), 1, "kept decoded after the first");

        // The application sets normal locking and writes: the store takes its locks back
        // when the connection is given back, and reads the session the application changed.
        one.connection()
            .execute_batch(
                "PRAGMA locking_mode = NORMAL; \
                 UPDATE typed_sessions SET data = json_set(data, '$.count', 40)",
            )
            .expect("the application's statements");
        assert!(!readable_by_another_connection(&path), "locks taken again");
        chain
            .run_update(Update::text(5, 7, 7, "+1"))
            .await
            .expect("update");
        let stored = one.load("Counter:7:7").await.expect("load").expect("a row");
        assert_eq!(stored["count"], "41", "the application's write was read");
        assert_eq!(sessions.stats().loads(), 2);
        common::remove_sqlite_file(&path);
    }

    #[tokio::test]
    async fn exclusive_locking_is_refused_while_another_connection_writes_and_the_store_stays_normal()
     {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let (one, two, path) = two_connections("exclusive-refused", clock).await;
        two.connection()
            .execute_batch("BEGIN IMMEDIATE")
            .expect("another connection's write lock");
        let refused = one
            .clone()
            .with_locking(typed_session::store::Locking::Exclusive);
        assert!(refused.is_err(), "the write lock is another connection's");
        two.connection().execute_batch("COMMIT").expect("commit");
        one.apply("k", &Patch::new().set_field("a", "1"))
            .await
            .expect("the store still writes");
        assert!(
            readable_by_another_connection(&path),
            "and leaves the file to others"
        );
        common::remove_sqlite_file(&path);
    }
}
