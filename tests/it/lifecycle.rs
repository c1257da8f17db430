//! "Persist after the chain", "Clear", "Errors in the chain": persist after the chain, clear, error policies, store failures, panics and
//! cancellation.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Counter, CounterAccess, Latency, ProbeStore, stored};
use typed_session::store::Patch;
use typed_session::telegram::Update;
use typed_session::{
    BoxError, Chain, ErrorPolicy, MemoryStore, SessionError, SessionMiddleware, Store,
};

async fn seeded(count: u64) -> MemoryStore {
    let memory = MemoryStore::new();
    memory
        .apply(
            "Counter:7:7",
            &Patch::new()
                .set_field("count", count.to_string())
                .set_field("lang", "\"de\""),
        )
        .await
        .expect("seed");
    memory
}

/// Increments `count`, then fails the chain.
fn failing_chain(sessions: &SessionMiddleware<Counter, Update>) -> Chain<Update> {
    Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            Err("handler failed".into())
        })
    })
}

/// Two first uses of one update's session at once (joined, on a store that answers late):
/// they share the update's one hold, so one load, one patch with both writes, and the entry
/// given back once.
#[tokio::test(start_paused = true)]
async fn two_first_uses_of_a_session_at_once_share_one_hold() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::with_latency(memory.clone(), Latency::Random { max_ms: 5 });
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let (one, two) = tokio::join!(ctx.session(), ctx.session());
            one?.update_count(|c| *c += 1);
            two?.update_count(|c| *c += 1);
            Ok(())
        })
    });

    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("ok");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(2));
    assert_eq!(probe.loads.load(Ordering::SeqCst), 1);
    assert_eq!(probe.applies.load(Ordering::SeqCst), 1);
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn the_write_is_durable_when_the_update_future_completes() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = Chain::new().with(sessions).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.set_note(Some("saved".into()));
            Ok(())
        })
    });

    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("ok");

    assert_eq!(
        stored::<Option<String>>(&memory, "7:7", "note"),
        Some(Some("saved".into()))
    );
}

#[tokio::test]
async fn clear_deletes_the_session_and_later_reads_in_the_same_chain_see_defaults() {
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = Chain::new()
        .with(sessions.clone())
        .with_fn(|ctx, next| {
            Box::pin(async move {
                let s = ctx.session().await?;
                assert_eq!(s.count(), 5);
                s.clear();
                next.run(ctx).await
            })
        })
        .handler(|ctx| {
            Box::pin(async move {
                let s = ctx.session().await?;
                assert_eq!((s.count(), s.lang()), (0, "en".to_owned()));
                Ok(())
            })
        });

    chain
        .run_update(Update::text(1, 7, 7, "/reset"))
        .await
        .expect("ok");

    assert_eq!(memory.raw("Counter:7:7"), None);
    assert_eq!((probe.deletes(), probe.applies()), (1, 0));
    assert_eq!(sessions.stats().deletes(), 1);
}

#[tokio::test]
async fn writes_after_clear_start_a_new_record() {
    let memory = seeded(5).await;
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = Chain::new().with(sessions).handler(|ctx| {
        Box::pin(async move {
            let s = ctx.session().await?;
            s.clear();
            s.update_count(|c| *c += 1);
            Ok(())
        })
    });

    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("ok");

    let record = memory.raw("Counter:7:7").expect("a new record");
    assert_eq!(
        record.len(),
        1,
        "the old `lang` went with the delete: {record:?}"
    );
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
}

#[tokio::test]
async fn by_default_a_failed_chain_still_persists_and_returns_its_error() {
    let memory = seeded(5).await;
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());

    let error = failing_chain(&sessions)
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect_err("the chain's error comes back");

    assert_eq!(error.to_string(), "handler failed");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(6));
}

#[tokio::test]
async fn the_discard_policy_drops_the_failed_updates_own_writes() {
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&probe))
        .on_error(ErrorPolicy::Discard)
        .build();

    let error = failing_chain(&sessions)
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect_err("the chain's error comes back");

    assert_eq!(error.to_string(), "handler failed");
    assert_eq!(probe.applies(), 0);
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(5));
}

#[tokio::test]
async fn discard_keeps_the_writes_of_another_update_that_shares_the_session() {
    let memory = seeded(5).await;
    let sessions = SessionMiddleware::<Counter, Update>::builder(memory.clone())
        .on_error(ErrorPolicy::Discard)
        .build();
    let (a_wrote_tx, a_wrote_rx) = tokio::sync::oneshot::channel::<()>();
    let (b_done_tx, b_done_rx) = tokio::sync::oneshot::channel::<()>();
    let a_wrote_tx = parking_lot::Mutex::new(Some(a_wrote_tx));
    let b_done_rx = parking_lot::Mutex::new(Some(b_done_rx));

    // A: sets the note, waits for B, then fails. B: bumps the count while A holds the session.
    let a = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let (tx, rx) = (a_wrote_tx.lock().take(), b_done_rx.lock().take());
        Box::pin(async move {
            ctx.session().await?.set_note(Some("from A".into()));
            tx.expect("once").send(()).expect("test alive");
            rx.expect("once").await.expect("B finished");
            Err::<(), BoxError>("A failed".into())
        })
    });
    let b = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            Ok(())
        })
    });
    let a = tokio::spawn(async move { a.run_update(Update::text(1, 7, 7, "a")).await });
    a_wrote_rx.await.expect("A wrote");
    b.run_update(Update::text(2, 7, 7, "b"))
        .await
        .expect("B succeeds");
    b_done_tx.send(()).expect("A waits");
    a.await.expect("no panic").expect_err("A fails");

    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(6),
        "B's write stands"
    );
    // B's persist wrote every dirty field, A's note included ("Persist after the chain"); A's discard takes it back.
    assert_eq!(stored::<Option<String>>(&memory, "7:7", "note"), Some(None));
    assert_eq!(sessions.live_sessions(), 0);
}

/// By default a failed save takes back the update's own writes and tells the caller to run
/// it again: delivered a second time, the update is applied once.
#[tokio::test]
async fn a_failed_save_takes_back_the_updates_writes_so_a_redelivery_applies_it_once() {
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let increment = common::incrementing(&sessions);

    probe.fail_next_applies(1);
    let ctx = typed_session::Context::new(Update::text(1, 7, 7, "+1"));
    let error = increment.run(&ctx).await.expect_err("persist failed");
    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(*error, SessionError::Save { ref key, .. } if key == "7:7"),
        "{error}"
    );
    assert!(ctx.must_retry(), "the caller is told to deliver it again");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(5));
    assert_eq!(sessions.unsaved_sessions(), 0, "nothing is left to save");
    assert_eq!(sessions.live_sessions(), 0);

    // Telegram delivers the same update again.
    increment
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("saved");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(6),
        "applied once"
    );
}

/// With `SaveFailurePolicy::Keep` (runners that never deliver an update twice) the writes of a
/// failed save stay live, and the next persist of the key writes them.
#[tokio::test]
async fn a_store_failure_during_persist_is_returned_and_the_fields_stay_dirty_for_the_next_persist()
{
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&probe))
        .on_save_failure(typed_session::SaveFailurePolicy::Keep)
        .build();
    let increment = common::incrementing(&sessions);
    let read_only = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            assert_eq!(
                ctx.session().await?.count(),
                6,
                "the unsaved value is still live"
            );
            Ok(())
        })
    });

    probe.fail_next_applies(1);
    let error = increment
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect_err("persist failed");
    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(*error, SessionError::Save { ref key, .. } if key == "7:7"),
        "{error}"
    );
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(5));
    assert_eq!(sessions.unsaved_sessions(), 1, "kept, not dropped");

    // The next update only reads, yet its persist writes the field left dirty.
    read_only
        .run_update(Update::text(2, 7, 7, "?"))
        .await
        .expect("ok");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(6));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn a_store_failure_after_a_failed_chain_reports_both_errors() {
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));

    probe.fail_next_applies(1);
    let error = failing_chain(&sessions)
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect_err("both failed");

    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(matches!(*error, SessionError::Save { .. }), "{error}");
    assert_eq!(
        error.chain_error().map(ToString::to_string).as_deref(),
        Some("handler failed")
    );
    let message = error.to_string();
    assert!(
        message.contains("injected failure") && message.contains("handler failed"),
        "{message}"
    );
}

#[tokio::test]
async fn flush_retries_sessions_whose_persist_failed() {
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&probe))
        .on_save_failure(typed_session::SaveFailurePolicy::Keep)
        .build();
    let increment = common::incrementing(&sessions);
    probe.fail_next_applies(2);
    increment
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect_err("persist failed");

    let still_unsaved = sessions.flush().await.expect_err("the store still fails");
    assert_eq!(still_unsaved.unsaved(), 1);
    assert!(
        matches!(still_unsaved.first(), SessionError::Save { key, .. } if key == "7:7"),
        "{still_unsaved}"
    );
    sessions.flush().await.expect("the store is back");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(6));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn a_load_failure_is_an_error_not_an_empty_session() {
    let memory = seeded(5).await;
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let increment = common::incrementing(&sessions);

    probe.fail_next_loads(1);
    let error = increment
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect_err("load failed");
    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(matches!(*error, SessionError::Load { .. }), "{error}");
    assert_eq!(
        probe.applies(),
        0,
        "nothing was written over the stored session"
    );

    increment
        .run_update(Update::text(2, 7, 7, "+1"))
        .await
        .expect("the store is back");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(6));
}

#[tokio::test]
async fn a_panicking_handler_still_persists_and_frees_its_session() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            panic!("handler bug");
        })
    });

    let outcome =
        tokio::spawn(async move { chain.run_update(Update::text(1, 7, 7, "x")).await }).await;
    assert!(outcome.expect_err("the task panicked").is_panic());

    sessions.wait_idle().await;
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn a_cancelled_update_persists_what_it_wrote() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel::<()>();
    let wrote_tx = parking_lot::Mutex::new(Some(wrote_tx));
    let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let tx = wrote_tx.lock().take();
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            tx.expect("once").send(()).expect("test alive");
            std::future::pending::<()>().await;
            Ok(())
        })
    });

    let task = tokio::spawn(async move { chain.run_update(Update::text(1, 7, 7, "x")).await });
    wrote_rx.await.expect("the handler wrote");
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());

    sessions.wait_idle().await;
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
}

#[test]
fn an_update_dropped_outside_any_runtime_keeps_its_changes_for_flush() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            std::future::pending::<()>().await;
            Ok(())
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut update = Box::pin(chain.run_update(Update::text(1, 7, 7, "x")));
    {
        // The memory store answers at once, so one poll reaches the handler's pending point.
        let _entered = runtime.enter();
        let poll = update
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(poll, Poll::Pending));
    }
    drop(runtime);
    drop(update); // no runtime to persist on

    assert_eq!(sessions.unsaved_sessions(), 1, "kept, not dropped");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(sessions.flush()).expect("flushed");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(sessions.live_sessions(), 0);
}

/// Update A clears the session; while A's delete is in flight, update B clears it too and then
/// sets `lang`. B's write must survive: A's delete already satisfied B's clear, so no second
/// delete may follow the patch that carries B's write.
#[tokio::test]
async fn a_write_after_a_clear_that_raced_another_clear_is_saved() {
    let memory = seeded(5).await;
    let probe = ProbeStore::gated_deletes(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let a = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.clear();
            Ok(())
        })
    });
    let (b_wrote, b_wrote_rx) = tokio::sync::oneshot::channel::<()>();
    let b_wrote = parking_lot::Mutex::new(Some(b_wrote));
    let b = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let wrote = b_wrote.lock().take();
        Box::pin(async move {
            let session = ctx.session().await?;
            session.clear();
            session.set_lang("x");
            if let Some(wrote) = wrote {
                let _ = wrote.send(());
            }
            Ok(())
        })
    });

    let a = tokio::spawn(async move { a.run_update(Update::text(1, 7, 7, "a")).await });
    probe.delete_started.notified().await; // A's delete is in flight
    let b = tokio::spawn(async move { b.run_update(Update::text(2, 7, 7, "b")).await });
    b_wrote_rx.await.expect("B's handler ran");
    probe.release_deletes(2);
    a.await.expect("no panic").expect("A succeeds");
    b.await.expect("no panic").expect("B succeeds");

    assert_eq!(
        stored::<String>(&memory, "7:7", "lang").as_deref(),
        Some("x"),
        "B's write after its clear is saved"
    );
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), None, "cleared");
    assert_eq!(probe.deletes(), 1, "one delete satisfied both clears");
}

/// Diagnostics: each load and each save is a span with the session type, the key and the
/// outcome; a save's span also carries the fields it set and removed and the bytes it wrote.
#[tokio::test]
async fn each_load_and_each_save_is_a_span_with_its_key_outcome_and_size() {
    let (logs, _capture) = common::logs::Logs::capture();
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = common::incrementing(&sessions);
    chain
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("saved");
    probe.fail_next_applies(1);
    chain
        .run_update(Update::text(2, 8, 8, "+1"))
        .await
        .expect_err("the store failed the save");

    let spans: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("span "))
        .collect();
    let span = |name: &str, key: &str| {
        spans
            .iter()
            .find(|line| {
                line.starts_with(&format!("span {name} "))
                    && line.contains(&format!("key=\"Counter:{key}\""))
            })
            .unwrap_or_else(|| panic!("no {name} span of {key}: {spans:?}"))
            .clone()
    };
    let (load, save) = (span("session.load", "7:7"), span("session.save", "7:7"));
    assert!(
        load.contains("session=\"Counter\"") && load.contains("outcome=\"none\""),
        "{load}"
    );
    assert!(
        save.contains("set=1")
            && save.contains("removed=0")
            && save.contains("bytes=6")
            && save.contains("outcome=\"saved\""),
        "{save}"
    );
    let failed = span("session.save", "8:8");
    assert!(failed.contains("outcome=\"error\""), "{failed}");
}

/// Durations a user may give for "no limit" (`Duration::MAX`): `try_build` refuses them and
/// names the setting; `build` clamps them (a day of waiting, a day of lease, ten years of
/// expiry), and updates then run and save instead of panicking on "overflow when adding
/// duration to instant".
#[tokio::test]
async fn absurd_durations_are_refused_by_try_build_and_clamped_by_build() {
    use std::time::Duration;
    let builder = || SessionMiddleware::<Counter, Update>::builder(MemoryStore::new());
    let refused = |b: typed_session::SessionBuilder<Counter, Update>| {
        b.try_build().expect_err("beyond its limit")
    };
    let wait = refused(builder().exclusive(Duration::MAX));
    assert_eq!((wait.setting, wait.value), ("exclusive", Duration::MAX));
    assert!(wait.to_string().contains("exclusive"), "{wait}");
    let lease = refused(
        builder()
            .exclusive_across_processes(Duration::from_secs(1), Duration::from_secs(2 * 86_400)),
    );
    assert_eq!(lease.setting, "exclusive_across_processes");
    let ttl = refused(builder().ttl(Some(Duration::MAX)));
    assert_eq!(ttl.setting, "ttl");
    assert!(
        builder()
            .exclusive(Duration::from_secs(10))
            .ttl(Some(Duration::from_secs(86_400)))
            .try_build()
            .is_ok()
    );

    for sessions in [
        builder().exclusive(Duration::MAX).build(),
        builder()
            .exclusive_across_processes(Duration::MAX, Duration::MAX)
            .build(),
        builder().ttl(Some(Duration::MAX)).build(),
    ] {
        let chain = common::incrementing(&sessions);
        chain
            .run_update(Update::text(1, 7, 7, "+1"))
            .await
            .expect("runs and saves");
        chain
            .run_update(Update::text(2, 7, 7, "+1"))
            .await
            .expect("runs and saves");
        assert_eq!(sessions.stats().writes(), 2);
    }
}

/// A patch with an expiry no clock can represent, written straight to the memory store (as a
/// tool may): kept as "for ever", not a panic.
#[tokio::test]
async fn the_memory_store_takes_an_unrepresentable_expiry_as_for_ever() {
    let memory = MemoryStore::new();
    memory
        .apply(
            "Counter:7:7",
            &Patch::new()
                .set_field("count", "1")
                .with_ttl(Some(std::time::Duration::MAX)),
        )
        .await
        .expect("applied");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
}
