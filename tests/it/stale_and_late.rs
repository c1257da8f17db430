//! "Stale writes" (stale writes) and "Late access" (use after the update was persisted).

use crate::common;

use std::sync::Arc;

use common::{Counter, CounterAccess, CounterHandle, stored};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, SessionError, SessionMiddleware, StalePolicy};

/// Runs A and B on one key: A reads `count`, B sets it to 100 and finishes, then A writes
/// `count` through `write`. Returns A's outcome.
async fn read_then_race(
    sessions: &SessionMiddleware<Counter, Update>,
    write: fn(&CounterHandle<'_>, u64),
) -> Result<(), typed_session::BoxError> {
    let (a_read_tx, a_read_rx) = oneshot::channel::<()>();
    let (b_done_tx, b_done_rx) = oneshot::channel::<()>();
    let a_chan = Mutex::new(Some((a_read_tx, b_done_rx)));
    let a = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let chan = a_chan.lock().take();
        Box::pin(async move {
            let (read_tx, done_rx) = chan.expect("runs once");
            let s = ctx.session().await?;
            let seen = s.count();
            read_tx.send(()).expect("test alive");
            done_rx.await.expect("B finished");
            write(&s, seen);
            Ok(())
        })
    });
    let b = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.set_count(100);
            Ok(())
        })
    });
    let a = tokio::spawn(async move { a.run_update(Update::text(1, 7, 7, "a")).await });
    a_read_rx.await.expect("A read");
    b.run_update(Update::text(2, 7, 7, "b"))
        .await
        .expect("B succeeds");
    b_done_tx.send(()).expect("A waits");
    a.await.expect("no panic")
}

/// By default a stale `set_*` is refused and the update told to run again: run again on the
/// newer value, it loses nothing.
#[tokio::test]
async fn by_default_a_stale_set_is_refused_and_the_update_runs_again_on_the_newer_value() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());

    let error = read_then_race(&sessions, |s, seen| s.set_count(seen + 1))
        .await
        .expect_err("refused");
    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(*error, SessionError::StaleWrite { field: "count", .. }),
        "{error}"
    );
    assert_eq!(sessions.stats().stale_writes(), 1);
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(100),
        "the other update's write stands"
    );

    // Delivered again, A reads 100 and writes 101.
    let again = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let s = ctx.session().await?;
            let seen = s.count();
            s.set_count(seen + 1);
            Ok(())
        })
    });
    again
        .run_update(Update::text(1, 7, 7, "a"))
        .await
        .expect("no longer stale");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(101));
    assert_eq!(sessions.unsaved_sessions(), 0);
}

#[tokio::test]
async fn a_set_after_another_update_changed_the_field_is_reported_stale() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(memory.clone())
        .on_stale_write(StalePolicy::Warn)
        .build();

    read_then_race(&sessions, |s, seen| s.set_count(seen + 1))
        .await
        .expect("warn only");

    assert_eq!(sessions.stats().stale_writes(), 1);
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(1),
        "the stale write stands, as warned"
    );
}

#[tokio::test]
async fn update_is_an_atomic_read_modify_write_and_never_stale() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());

    read_then_race(&sessions, |s, _| s.update_count(|c| *c += 1))
        .await
        .expect("ok");

    assert_eq!(sessions.stats().stale_writes(), 0);
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(101));
}

#[tokio::test]
async fn in_strict_mode_a_stale_write_fails_the_update() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(memory.clone())
        .on_stale_write(StalePolicy::Error)
        .build();

    let error = read_then_race(&sessions, |s, seen| s.set_count(seen + 1))
        .await
        .expect_err("stale write is an error");

    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(*error, SessionError::StaleWrite { field: "count", ref key, .. } if key == "7:7"),
        "{error}"
    );
    assert!(
        error.to_string().contains("update_count"),
        "the message names the fix: {error}"
    );
}

#[tokio::test]
async fn a_blind_write_without_a_read_is_not_stale() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.set_count(3);
            Ok(())
        })
    });
    for i in 0..3 {
        chain
            .run_update(Update::text(i, 7, 7, "=3"))
            .await
            .expect("ok");
    }
    assert_eq!(sessions.stats().stale_writes(), 0);
}

#[tokio::test]
async fn a_handle_kept_after_its_update_was_persisted_is_detected_and_its_write_not_saved() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let kept: Arc<Mutex<Option<CounterHandle<'static>>>> = Arc::default();
    let keep = Arc::clone(&kept);
    let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let keep = Arc::clone(&keep);
        Box::pin(async move {
            let s = ctx.session_owned::<Counter>().await?;
            s.set_count(1);
            *keep.lock() = Some(s);
            Ok(())
        })
    });
    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("ok");

    let late = kept.lock().take().expect("kept");
    assert!(!late.is_live());
    late.set_count(99);

    assert_eq!(sessions.stats().late_accesses(), 1);
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn asking_for_the_session_after_the_chain_returned_is_an_error() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    // Telegraf's "session accessed after the middleware chain exhausted": an outer middleware
    // asks after the session middleware has persisted.
    let chain = Chain::new()
        .with_fn(|ctx, next| {
            Box::pin(async move {
                next.run(ctx).await?;
                match ctx.session().await {
                    Err(SessionError::AfterSave { key, .. }) => {
                        assert_eq!(key, "7:7");
                        Ok(())
                    }
                    other => Err(format!("expected AfterSave, got {other:?}").into()),
                }
            })
        })
        .with(sessions.clone())
        .handler(|ctx| {
            Box::pin(async move {
                ctx.session().await?.set_count(1);
                Ok(())
            })
        });

    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("the outer middleware saw the error");
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
#[should_panic(expected = "from inside a closure passed to with_*/update_* of the same session")]
async fn calling_the_session_from_inside_its_own_closure_panics_instead_of_deadlocking() {
    let sessions = SessionMiddleware::<Counter, Update>::new(MemoryStore::new());
    let chain = Chain::new().with(sessions).handler(|ctx| {
        Box::pin(async move {
            let s = ctx.session().await?;
            s.update_count(|c| *c += s.lang().len() as u64);
            Ok(())
        })
    });
    let _ = chain.run_update(Update::text(1, 7, 7, "x")).await;
}
