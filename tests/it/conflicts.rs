//! "No stale overwrite": several writers on one store (replicas behind a load balancer, a bot
//! and an admin tool). A write based on an older value than the store holds is refused, the
//! live session is refreshed, and the update is told to run again; nothing acknowledged is
//! overwritten and a count never goes backwards.

use crate::common;

use std::sync::Arc;

use common::{Counter, CounterAccess, ProbeStore, incrementing, stored};
use typed_session::store::Patch;
use typed_session::telegram::Update;
use typed_session::{Chain, Context, MemoryStore, SessionError, SessionMiddleware, Store};

fn text(id: i64) -> Update {
    Update::text(id, 7, 7, "+1")
}

/// Replica 1 saves count 1; its next save fails (that update is answered with an error and
/// Telegram delivers it again, to replica 2). Replica 2 handles updates 2 to 5: count 5.
/// Update 6 reaches replica 1. By default the failed save took its write back, so replica 1
/// reads 5 and makes 6.
#[tokio::test]
async fn a_replica_whose_save_failed_holds_nothing_stale() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let replica1 = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let replica2 = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (one, two) = (incrementing(&replica1), incrementing(&replica2));

    one.run_update(text(1)).await.expect("saved");
    probe.fail_next_applies(1);
    one.run_update(text(2)).await.expect_err("the save fails");
    for id in 2..=5 {
        two.run_update(text(id)).await.expect("saved by replica 2");
    }
    one.run_update(text(6)).await.expect("saved");

    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(6),
        "every acknowledged update counted once"
    );
    assert_eq!(replica1.stats().conflicts(), 0);
}

/// The same with `SaveFailurePolicy::Keep`: replica 1's session still holds its unsaved 2 when
/// update 6 comes. Its write is refused instead of putting 3 over 5; run again, it makes 6.
#[tokio::test]
async fn a_replica_never_overwrites_a_newer_save_of_another() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let replica1 = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&probe))
        .on_save_failure(typed_session::SaveFailurePolicy::Keep)
        .build();
    let replica2 = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (one, two) = (incrementing(&replica1), incrementing(&replica2));

    one.run_update(text(1)).await.expect("saved");
    probe.fail_next_applies(1);
    one.run_update(text(2)).await.expect_err("the save fails");
    for id in 2..=5 {
        two.run_update(text(id)).await.expect("saved by replica 2");
    }
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(5));

    let ctx = Context::new(text(6));
    let refused = one
        .run(&ctx)
        .await
        .expect_err("a write based on count 1 is refused");
    let refused = refused.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(&*refused, SessionError::Conflict { fields, .. } if fields == &["count"]),
        "{refused}"
    );
    assert!(ctx.must_retry(), "the update is told to run again");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(5),
        "never backwards"
    );
    assert_eq!(replica1.stats().conflicts(), 1);

    one.run_update(text(6))
        .await
        .expect("runs on the refreshed session");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(6),
        "every acknowledged update counted once"
    );
    assert_eq!(replica1.unsaved_sessions(), 0);
    assert_eq!(replica1.live_sessions(), 0);
}

/// An admin tool writes `lang` while an update that read the session is running; the update
/// changes `count` only: different fields never conflict, and both writes stand.
#[tokio::test]
async fn writes_of_other_fields_never_conflict() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let admin = memory.clone();
    let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let admin = admin.clone();
        Box::pin(async move {
            let counter = ctx.session().await?;
            admin
                .apply("Counter:7:7", &Patch::new().set_field("lang", "\"fr\""))
                .await?;
            counter.update_count(|c| *c += 1);
            Ok(())
        })
    });

    chain.run_update(text(1)).await.expect("no conflict");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(
        stored::<String>(&memory, "7:7", "lang").as_deref(),
        Some("fr")
    );
    assert_eq!(sessions.stats().conflicts(), 0);
}

/// An admin tool sets `count` while an update that read it is running: the update's write of
/// `count` is refused, and the admin's value stands until the update runs again on it.
#[tokio::test]
async fn a_write_of_the_same_field_by_another_writer_is_never_overwritten() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let admin = memory.clone();
    let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let admin = admin.clone();
        Box::pin(async move {
            let counter = ctx.session().await?;
            if ctx.update().update_id == 1 {
                admin
                    .apply("Counter:7:7", &Patch::new().set_field("count", "100"))
                    .await?;
            }
            counter.update_count(|c| *c += 1);
            Ok(())
        })
    });

    let error = chain.run_update(text(1)).await.expect_err("refused");
    assert!(error.to_string().contains("run it again"), "{error}");
    assert_eq!(
        stored::<u64>(&memory, "7:7", "count"),
        Some(100),
        "the admin's value stands"
    );

    chain
        .run_update(text(2))
        .await
        .expect("runs on the admin's value");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(101));
}
