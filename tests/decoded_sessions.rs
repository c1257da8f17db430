//! "Decoded between updates": with a store that tells revisions (the memory store), a session
//! no update holds stays decoded, and the next update of its key takes it without a load while
//! the stored record is unchanged; any other change of the record makes it load again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Counter, ProbeStore, incrementing, stored};
use typed_session::store::{Patch, Revision};
use typed_session::telegram::Update;
use typed_session::{MemoryStore, SessionMiddleware, Store};

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
