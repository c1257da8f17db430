//! "Sharing" and "Persist after the chain": concurrent updates of one key share one live session, lose nothing, read the
//! store once per burst, and write in order.

use crate::common;

use std::sync::Arc;

use common::{Counter, CounterAccess, Latency, ProbeStore, stored};
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, SessionMiddleware};

fn incrementing_chain(sessions: &SessionMiddleware<Counter, Update>) -> Arc<Chain<Update>> {
    Arc::new(Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            Ok(())
        })
    }))
}

async fn run_concurrently(chain: &Arc<Chain<Update>>, updates: impl IntoIterator<Item = Update>) {
    let tasks: Vec<_> = updates
        .into_iter()
        .map(|u| {
            let chain = Arc::clone(chain);
            tokio::spawn(async move { chain.run_update(u).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic").expect("update succeeds");
    }
}

#[tokio::test(start_paused = true)]
async fn thousand_concurrent_increments_of_one_key_lose_nothing_with_random_store_latency() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::with_latency(memory.clone(), Latency::Random { max_ms: 20 });
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = incrementing_chain(&sessions);

    run_concurrently(&chain, (0..1000).map(|i| Update::text(i, 7, 7, "+1"))).await;

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1000));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_increments_lose_nothing_and_never_reorder_when_the_store_completes_out_of_order()
 {
    let memory = MemoryStore::new();
    // Call k waits (5000 - k) ms: every later call completes before every earlier one.
    let probe = ProbeStore::with_latency(memory.clone(), Latency::Reversed { total: 5000 });
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = incrementing_chain(&sessions);

    // 10 keys x 100 increments, interleaved, so calls of different keys overlap in the store.
    run_concurrently(
        &chain,
        (0..1000).map(|i| Update::text(i, i % 10, i % 10, "+1")),
    )
    .await;

    for user in 0..10 {
        let key = format!("Counter:{user}:{user}");
        assert_eq!(
            stored::<u64>(&memory, &format!("{user}:{user}"), "count"),
            Some(100),
            "key {key}"
        );
        let written: Vec<u64> = probe
            .patches()
            .iter()
            .filter(|p| p.key == key)
            .map(|p| p.set["count"].parse().expect("a number"))
            .collect();
        assert!(
            written.windows(2).all(|w| w[0] < w[1]),
            "patches of {key} landed out of order: {written:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_increments_on_two_threads_lose_nothing() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = incrementing_chain(&sessions);

    run_concurrently(&chain, (0..1000).map(|i| Update::text(i, 7, 7, "+1"))).await;

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1000));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_concurrent_updates_of_one_key_reads_the_store_once() {
    let probe = ProbeStore::with_latency(MemoryStore::new(), Latency::Random { max_ms: 5 });
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = incrementing_chain(&sessions);

    run_concurrently(&chain, (0..100).map(|i| Update::text(i, 7, 7, "+1"))).await;

    assert_eq!(probe.loads(), 1);
    assert_eq!(
        sessions.stats().loads(),
        1,
        "the middleware counts what the store saw"
    );
}

#[tokio::test]
async fn an_update_arriving_while_a_persist_is_in_flight_sees_that_write() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::gated(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = incrementing_chain(&sessions);

    // First update: count 0 -> 1; its persist is held inside the store.
    let first = {
        let chain = Arc::clone(&chain);
        tokio::spawn(async move { chain.run_update(Update::text(1, 7, 7, "+1")).await })
    };
    probe.apply_started.notified().await;
    assert_eq!(
        memory.raw("Counter:7:7"),
        None,
        "the write has not landed yet"
    );
    assert_eq!(
        sessions.live_sessions(),
        1,
        "the entry stays while its persist runs"
    );

    // Second update: must see 1 (the in-flight write), not the stored nothing.
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = parking_lot::Mutex::new(Some(seen_tx));
    let reader = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let seen_tx = seen_tx.lock().take();
        Box::pin(async move {
            let count = ctx.session().await?.count();
            if let Some(tx) = seen_tx {
                let _ = tx.send(count);
            }
            Ok(())
        })
    });
    let second = tokio::spawn(async move { reader.run_update(Update::text(2, 7, 7, "?")).await });
    assert_eq!(seen_rx.await.expect("the reader ran"), 1);

    probe.release_applies(1);
    first
        .await
        .expect("no panic")
        .expect("first update succeeds");
    second
        .await
        .expect("no panic")
        .expect("second update succeeds");
    assert_eq!(probe.loads(), 1, "the second update joined the live entry");
    assert_eq!(probe.applies(), 1, "the reader wrote nothing");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn after_100_000_distinct_keys_the_registry_is_empty() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = incrementing_chain(&sessions);

    for batch in 0..100 {
        run_concurrently(
            &chain,
            (0..1000).map(|i| {
                let user = batch * 1000 + i;
                Update::text(user, user, user, "+1")
            }),
        )
        .await;
    }

    assert_eq!(sessions.live_sessions(), 0);
    assert_eq!(memory.len(), 100_000);
}

/// The pattern that lost 97 % of its increments when a stale write only warned: read the
/// count, `.await` something, then `set_count(read + 1)`, from 100 concurrent updates of one
/// chat, each delivered again while it is refused (as Telegram does after an error status).
/// Every increment lands.
#[tokio::test(start_paused = true)]
async fn read_await_then_set_loses_no_increment_when_refused_updates_run_again() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::with_latency(memory.clone(), Latency::Random { max_ms: 5 });
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = Arc::new(Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let counter = ctx.session().await?;
            let seen = counter.count();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            counter.set_count(seen + 1);
            Ok(())
        })
    }));

    let tasks: Vec<_> = (0..100)
        .map(|id| {
            let chain = Arc::clone(&chain);
            tokio::spawn(async move {
                let mut deliveries = 0;
                loop {
                    deliveries += 1;
                    let ctx = typed_session::Context::new(Update::text(id, 7, 7, "+1"));
                    match chain.run(&ctx).await {
                        Ok(()) => return deliveries,
                        Err(_) if ctx.must_retry() => continue,
                        Err(error) => panic!("{error}"),
                    }
                }
            })
        })
        .collect();
    let mut deliveries = 0;
    for task in tasks {
        deliveries += task.await.expect("no panic");
    }

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(100));
    assert!(
        deliveries > 100,
        "some were refused and ran again: {deliveries}"
    );
    assert_eq!(sessions.stats().stale_writes(), deliveries as u64 - 100);
    assert_eq!(sessions.live_sessions(), 0);
}

/// In exclusive mode one update per key runs at a time from its first use of the session:
/// read, `.await`, `set_*` from 100 concurrent updates is never stale, and each runs once.
#[tokio::test(start_paused = true)]
async fn in_exclusive_mode_read_await_then_set_is_never_stale() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::with_latency(memory.clone(), Latency::Random { max_ms: 5 });
    let sessions = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&probe))
        .exclusive(std::time::Duration::from_secs(60))
        .build();
    let chain = Arc::new(Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let counter = ctx.session().await?;
            let seen = counter.count();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            counter.set_count(seen + 1);
            Ok(())
        })
    }));

    run_concurrently(&chain, (0..100).map(|id| Update::text(id, 7, 7, "+1"))).await;

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(100));
    assert_eq!(sessions.stats().stale_writes(), 0);
    assert_eq!(probe.applies(), 100, "one save per update, in turn");
    assert_eq!(sessions.live_sessions(), 0);
}

/// An update that waits longer than the exclusive wait for its turn gets a typed error, and
/// nothing of it is written.
#[tokio::test(start_paused = true)]
async fn in_exclusive_mode_a_key_busy_past_the_wait_is_a_typed_error() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(memory.clone())
        .exclusive(std::time::Duration::from_secs(1))
        .build();
    let has_key = Arc::new(tokio::sync::Notify::new());
    let slow = Chain::new().with(sessions.clone()).handler({
        let has_key = Arc::clone(&has_key);
        move |ctx| {
            let has_key = Arc::clone(&has_key);
            Box::pin(async move {
                ctx.session().await?.update_count(|c| *c += 1);
                has_key.notify_one();
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                Ok(())
            })
        }
    });
    let slow = tokio::spawn(async move { slow.run_update(Update::text(1, 7, 7, "slow")).await });
    has_key.notified().await; // the slow update has the key
    let error = common::incrementing(&sessions)
        .run_update(Update::text(2, 7, 7, "+1"))
        .await
        .expect_err("busy");
    let error = error
        .downcast::<typed_session::SessionError>()
        .expect("typed");
    assert!(
        matches!(*error, typed_session::SessionError::Busy { ref key, .. } if key == "7:7"),
        "{error}"
    );
    slow.await
        .expect("no panic")
        .expect("the slow one finishes");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(1),
        "only the slow one"
    );
}
