//! Redelivery: Telegram delivers an update again when it got no answer in time, or an error
//! status; a replica may have saved it and crashed before answering. A session records, beside
//! each field, the id of the update that last wrote it, so a delivery of an update already
//! saved runs without applying its session writes again.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Counter, CounterAccess, incrementing, stored};
use typed_session::store::{Patch, StoreFuture};
use typed_session::telegram::Update;
use typed_session::{MemoryStore, SessionMiddleware, Store, StoreError};

#[tokio::test]
async fn an_update_delivered_twice_is_counted_once() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = incrementing(&sessions);

    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("saved");
    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("handled again");
    chain
        .run_update(Update::text(42, 7, 7, "+1"))
        .await
        .expect("a new update");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(2));
    assert_eq!(sessions.stats().redeliveries(), 1);
}

/// Update 41 is saved and its answer lost; update 42 then writes the same field, so the field
/// no longer names 41 as its writer. The session's window of recent update ids still does:
/// the second delivery of 41 counts nothing, on another replica too.
#[tokio::test]
async fn a_redelivery_after_a_later_update_rewrote_its_fields_is_still_recognised() {
    let memory = MemoryStore::new();
    let replica1 = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let replica2 = SessionMiddleware::<Counter, Update>::new(memory.clone());

    for id in [41, 42] {
        incrementing(&replica1)
            .run_update(Update::text(id, 7, 7, "+1"))
            .await
            .expect("saved");
    }
    incrementing(&replica2)
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("recognised");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(2));
    assert_eq!(replica2.stats().redeliveries(), 1);
}

/// The window is bounded: a ring of slots, two per update of a patch and 4 more, so with
/// one update a patch an old update id is forgotten once 6 later updates wrote the session
/// (and a delivery of it would run again).
#[tokio::test]
async fn the_window_of_recent_updates_is_bounded() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    for id in 1..=40 {
        incrementing(&sessions)
            .run_update(Update::text(id, 7, 7, "+1"))
            .await
            .expect("saved");
    }
    let record = memory
        .load("Counter:7:7")
        .await
        .expect("load")
        .expect("stored");
    let mut window: Vec<i64> = (0..64)
        .filter_map(|slot| record.writers.get(&format!("@{slot}")).copied())
        .collect();
    window.sort_unstable();
    assert_eq!(window, (35..=40).collect::<Vec<_>>(), "the 6 latest");
    assert_eq!(
        record.fields.keys().filter(|f| f.starts_with('@')).count(),
        0,
        "the window is bookkeeping beside the fields, not a field"
    );
}

/// Replica 1 saves update 41 and dies before answering; Telegram delivers it to replica 2,
/// which recognises it from the store.
#[tokio::test]
async fn a_delivery_to_another_replica_after_a_crash_between_save_and_answer_is_recognised() {
    let memory = MemoryStore::new();
    let replica1 = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let replica2 = SessionMiddleware::<Counter, Update>::new(memory.clone());

    incrementing(&replica1)
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("saved; the answer is lost");
    incrementing(&replica2)
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("recognised");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(replica2.stats().redeliveries(), 1);
}

/// What a redelivered update's handler computes from its writes is what it computed the
/// first time is not guaranteed, but nothing it writes reaches the store: here it sees the
/// count after its first delivery, and leaves it there.
#[tokio::test]
async fn a_redelivered_update_reads_the_session_and_writes_nothing() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = typed_session::Chain::new()
        .with(sessions.clone())
        .handler(|ctx| {
            Box::pin(async move {
                let counter = ctx.session().await?;
                let after = counter.update_count(|c| {
                    *c += 1;
                    *c
                });
                counter.set_lang("de");
                ctx.reply_with(serde_json::json!({ "count": after, "seen": counter.count() }));
                Ok(())
            })
        });

    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("saved");
    let ctx = typed_session::Context::new(Update::text(41, 7, 7, "+1"));
    chain.run(&ctx).await.expect("handled");

    assert_eq!(
        ctx.take_reply(),
        Some(serde_json::json!({ "count": 2, "seen": 1 }))
    );
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(
        sessions.stats().writes(),
        1,
        "the second delivery wrote nothing"
    );
}

#[tokio::test]
async fn recognition_can_be_turned_off() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(memory.clone())
        .recognize_redelivery(false)
        .build();
    let chain = incrementing(&sessions);

    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("saved");
    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("applied again");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(2));
    assert_eq!(sessions.stats().redeliveries(), 0);
}

/// A store whose reads do not prove a write safe (as `RedisStore::wait_for_replicas`: a read
/// may return a write the replicas do not have yet), over a memory store: it counts the
/// writes it is sent, and refuses them while `failing` is set, as a master whose replicas
/// did not confirm in time.
#[derive(Clone, Default)]
struct ReplicatedStore {
    inner: MemoryStore,
    writes: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Store for ReplicatedStore {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<Option<typed_session::store::Record>, StoreError>> {
        self.inner.load(key)
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return StoreFuture::ready(Err(StoreError::backend(
                "replicated",
                typed_session::StoreOp::Apply,
                key,
                "0 of 1 replicas acknowledged the write in time",
            )));
        }
        self.inner.apply(key, patch)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        self.inner.delete(key)
    }

    fn reads_are_durable(&self) -> bool {
        false
    }
}

/// Where a read may return a write the replicas do not have, a delivery found saved is
/// acknowledged only after a write of its own to the record succeeds (whose replication
/// covers the earlier writes); while that write fails, the update is told to run again.
#[tokio::test]
async fn a_redelivery_found_saved_by_a_read_that_proves_nothing_is_acknowledged_after_a_write() {
    let store = ReplicatedStore::default();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let chain = incrementing(&sessions);
    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("saved");
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);

    // Found saved: one write more (a mark, no session field), and acknowledged.
    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("recognised, and its mark written");
    assert_eq!(store.writes.load(Ordering::SeqCst), 2);

    // The mark's write fails: not acknowledged, and counted nowhere.
    store.failing.store(true, Ordering::SeqCst);
    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect_err("the write that would prove it replicated failed");
    store.failing.store(false, Ordering::SeqCst);
    chain
        .run_update(Update::text(41, 7, 7, "+1"))
        .await
        .expect("recognised again, and acknowledged");

    assert_eq!(stored::<u64>(&store.inner, "7:7", "count"), Some(1));
    assert_eq!(sessions.stats().redeliveries(), 3);
}

/// Where reads are durable (every store but Redis waiting for replicas), a redelivery found
/// saved writes nothing.
#[tokio::test]
async fn a_redelivery_found_saved_where_reads_are_durable_writes_nothing() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = incrementing(&sessions);
    for _ in 0..2 {
        chain
            .run_update(Update::text(41, 7, 7, "+1"))
            .await
            .expect("saved, then recognised");
    }
    assert_eq!(sessions.stats().writes(), 1);
}
