//! The dptree handlers of the teloxide adapter, run by dptree itself on teloxide-core updates:
//! the session is persisted when dispatch returns, only for the branch that changed it; the
//! typed handle arrives as a dependency; late use of a kept handle is detected.
//!
//! "Lazy load" (a branch that never uses the session costs no store call), "Sharing" (100 concurrent
//! updates of one chat lose nothing), "Persist after the chain" (persisted when dispatch returns), "Errors in the chain" (error policy
//! and failed saves), "Keys" (no key: the typed error) and "Late access" (late access) inside dptree.
#![cfg(feature = "teloxide")]

use crate::common;

use std::ops::ControlFlow;
use std::sync::Arc;

use common::{Counter, CounterHandle, ProbeStore, stored};
use serde_json::json;
use typed_session::dispatching::{attach, load};
use typed_session::dptree::{self, Handler};
use typed_session::teloxide_core::types::{Message, Update, UpdateKind};
use typed_session::{
    BoxError, ErrorPolicy, LazySession, MemoryStore, SessionError, SessionMiddleware,
};

type HandlerResult = Result<(), BoxError>;

fn text(update_id: i64, user: i64, text: &str) -> Update {
    serde_json::from_str(
        &json!({
            "update_id": update_id,
            "message": {
                "message_id": update_id, "date": 1_700_000_000, "text": text,
                "from": {"id": user, "is_bot": false, "first_name": "Ada"},
                "chat": {"id": user, "type": "private", "first_name": "Ada"},
            }
        })
        .to_string(),
    )
    .expect("a Bot API update")
}

fn channel_post(update_id: i64) -> Update {
    serde_json::from_str(
        &json!({
            "update_id": update_id,
            "channel_post": {
                "message_id": update_id, "date": 1_700_000_000, "text": "news",
                "chat": {"id": -1002, "type": "channel", "title": "News"},
            }
        })
        .to_string(),
    )
    .expect("a Bot API update")
}

fn messages(update: Update) -> Option<Message> {
    match update.kind {
        UpdateKind::Message(message) => Some(message),
        _ => None,
    }
}

/// Messages saying "count" increment the counter; "fail" increments and then fails; other
/// updates fall through every branch.
fn bot(sessions: SessionMiddleware<Counter, Update>) -> Handler<'static, HandlerResult> {
    dptree::entry().chain(sessions.attach()).branch(
        dptree::filter_map(messages)
            .filter(|m: Message| matches!(m.text(), Some("count" | "fail")))
            .chain(sessions.load())
            .endpoint(|counter: CounterHandle<'static>, m: Message| async move {
                counter.update_count(|c| *c += 1);
                match m.text() {
                    Some("fail") => Err("the handler failed".into()),
                    _ => Ok(()),
                }
            }),
    )
}

/// Reads `count`, lets another update of the same chat (through the same middleware) set it to
/// 100 and save, then sets it to what it read plus one: a stale write.
fn stale_writer(sessions: &SessionMiddleware<Counter, Update>) -> Handler<'static, HandlerResult> {
    let other = common::sets_count_to_100(sessions);
    dptree::entry().chain(sessions.attach()).branch(
        dptree::filter_map(messages)
            .chain(sessions.load())
            .endpoint(move |counter: CounterHandle<'static>| {
                let other = other.clone();
                async move {
                    let seen = counter.count();
                    other.run_update(text(2, 7, "other")).await?;
                    counter.set_count(seen + 1);
                    Ok(())
                }
            }),
    )
}

async fn dispatch(
    bot: &Handler<'static, HandlerResult>,
    update: Update,
) -> ControlFlow<HandlerResult, dptree::di::DependencyMap> {
    bot.dispatch(dptree::deps![update]).await
}

#[tokio::test]
async fn the_session_is_persisted_when_dispatch_returns() {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let bot = bot(sessions.clone());

    for id in 1..=3 {
        let flow = dispatch(&bot, text(id, 7, "count")).await;
        assert!(matches!(flow, ControlFlow::Break(Ok(()))), "{flow:?}");
        assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(id as u64));
    }
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn an_update_no_branch_takes_costs_no_store_call_and_sees_no_session_afterwards() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let bot = bot(sessions);

    let flow = dispatch(&bot, text(1, 7, "hello")).await;
    let ControlFlow::Continue(deps) = flow else {
        panic!("no branch should take it: {flow:?}");
    };
    assert!(deps.try_get::<LazySession<Counter>>().is_none());
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn a_failing_handler_is_a_failure_for_the_error_policy() {
    let store = MemoryStore::new();
    let keep = SessionMiddleware::<Counter, Update>::new(store.clone());
    let flow = dispatch(&bot(keep), text(1, 7, "fail")).await;
    assert!(matches!(flow, ControlFlow::Break(Err(_))), "{flow:?}");
    assert_eq!(
        stored::<u64>(&store, "7:7", "count"),
        Some(1),
        "persist on error"
    );

    let discard = SessionMiddleware::<Counter, Update>::builder(store.clone())
        .on_error(ErrorPolicy::Discard)
        .build();
    let flow = dispatch(&bot(discard), text(2, 7, "fail")).await;
    assert!(matches!(flow, ControlFlow::Break(Err(_))), "{flow:?}");
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(1), "discarded");
}

#[tokio::test]
async fn a_save_that_fails_becomes_the_handler_error_and_the_change_stays_live() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    probe.fail_next_applies(1);

    let flow = dispatch(&bot(sessions.clone()), text(1, 7, "count")).await;
    let ControlFlow::Break(Err(error)) = flow else {
        panic!("expected the persist error: {flow:?}");
    };
    assert!(matches!(
        error.downcast_ref::<SessionError>(),
        Some(SessionError::Save { .. })
    ));
    assert_eq!(sessions.unsaved_sessions(), 1);
    sessions.flush().await.expect("the store is back");
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
}

#[tokio::test]
async fn an_update_without_a_key_ends_the_loading_branch_with_the_typed_error() {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let bot: Handler<'static, HandlerResult> = dptree::entry()
        .chain(sessions.attach())
        .chain(sessions.load())
        .endpoint(|_: CounterHandle<'static>| async { Ok(()) });

    let flow = dispatch(&bot, channel_post(1)).await;
    let ControlFlow::Break(Err(error)) = flow else {
        panic!("expected NoKey: {flow:?}");
    };
    assert!(matches!(
        error.downcast_ref::<SessionError>(),
        Some(SessionError::NoKey { .. })
    ));
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_handle_kept_after_the_handler_is_detected_as_a_late_access() {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let (kept_tx, kept_rx) = std::sync::mpsc::channel::<CounterHandle<'static>>();
    let kept_tx = Arc::new(parking_lot::Mutex::new(kept_tx));
    let bot: Handler<'static, HandlerResult> = dptree::entry()
        .chain(sessions.attach())
        .chain(sessions.load())
        .endpoint(move |counter: CounterHandle<'static>| {
            let kept_tx = Arc::clone(&kept_tx);
            async move {
                counter.set_count(5);
                kept_tx.lock().send(counter).map_err(|_| "receiver gone")?;
                Ok(())
            }
        });

    let flow = dispatch(&bot, text(1, 7, "count")).await;
    assert!(matches!(flow, ControlFlow::Break(Ok(()))), "{flow:?}");
    let late = kept_rx.recv().expect("the handler kept its handle");
    late.set_count(6);

    assert_eq!(sessions.stats().late_accesses(), 1);
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_updates_of_one_chat_lose_nothing() {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let bot = bot(sessions.clone());

    let mut running = tokio::task::JoinSet::new();
    for id in 1..=100 {
        let bot = bot.clone();
        running.spawn(async move { dispatch(&bot, text(id, 7, "count")).await });
    }
    while let Some(flow) = running.join_next().await {
        let flow = flow.expect("no panic");
        assert!(matches!(flow, ControlFlow::Break(Ok(()))), "{flow:?}");
    }
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(100));
    assert_eq!(sessions.live_sessions(), 0);
}

/// The update kinds of a toy dispatcher, for dptree's interest sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Message,
    InlineQuery,
}

impl dptree::description::EventKind for Kind {
    fn full_set() -> std::collections::HashSet<Self> {
        [Kind::Message, Kind::InlineQuery].into()
    }

    fn empty_set() -> std::collections::HashSet<Self> {
        std::collections::HashSet::new()
    }
}

#[test]
fn attaching_sessions_does_not_widen_the_update_kinds_asked_for() {
    use dptree::description::InterestSet;

    let sessions = SessionMiddleware::<Counter, Update>::new(MemoryStore::new());
    let only_messages = || {
        dptree::filter_with_description(
            InterestSet::new_filter([Kind::Message].into()),
            |_: Update| true,
        )
    };
    let bot: Handler<'static, HandlerResult, InterestSet<Kind>> =
        dptree::entry().chain(attach(sessions)).branch(
            only_messages()
                .chain(load::<Counter, _, _>())
                .endpoint(|_: CounterHandle<'static>| async { Ok(()) }),
        );
    let observed = &bot.description().observed;
    assert_eq!(observed, &[Kind::Message].into());
}

/// Under the strict stale-write policy the handlers' outcome becomes the typed `StaleWrite`,
/// but the session was saved: it must not be reported as unsaved.
#[tokio::test]
async fn a_strict_stale_write_is_saved_and_not_reported_as_unsaved() {
    let (logs, _capture) = common::logs::Logs::capture();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(store.clone())
        .on_stale_write(typed_session::StalePolicy::Error)
        .build();
    let bot = stale_writer(&sessions);

    let flow = dispatch(&bot, text(1, 7, "count")).await;

    let ControlFlow::Break(Err(error)) = flow else {
        panic!("a strict stale write fails the update: {flow:?}");
    };
    let error = error.downcast::<SessionError>().expect("the typed error");
    assert!(
        matches!(*error, SessionError::StaleWrite { field: "count", .. }),
        "{error}"
    );
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(1), "saved");
    assert_eq!(sessions.unsaved_sessions(), 0);
    assert!(
        !logs.contain("could not be saved") && !logs.contain("not persisted"),
        "not reported as unsaved: {:?}",
        logs.lines()
    );
}

/// A dispatcher never delivers an update twice, so nothing of an update is refused to have it
/// run again: under the default policies a stale write stands (and is counted), where the
/// chain would refuse it.
#[tokio::test]
async fn under_a_dispatcher_a_stale_write_stands_rather_than_being_refused() {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let bot = stale_writer(&sessions);

    let flow = dispatch(&bot, text(1, 7, "count")).await;

    assert!(matches!(flow, ControlFlow::Break(Ok(()))), "{flow:?}");
    assert_eq!(sessions.stats().stale_writes(), 1, "counted");
    assert_eq!(
        stored::<u64>(&store, "7:7", "count"),
        Some(1),
        "the write stands"
    );
}

/// Handlers with teloxide's own `ResponseResult<()>` use sessions unchanged: a session error
/// reaches the dispatcher as a `RequestError`, with the typed session error inside.
#[tokio::test]
async fn handlers_returning_teloxide_response_result_get_session_errors_as_request_errors() {
    use typed_session::dispatching::session_error;
    use typed_session::teloxide_core::RequestError;

    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let bot: Handler<'static, Result<(), RequestError>> = dptree::entry()
        .chain(sessions.attach())
        .chain(sessions.load())
        .endpoint(|counter: CounterHandle<'static>| async move {
            counter.update_count(|c| *c += 1);
            Ok(())
        });

    let flow = bot.dispatch(dptree::deps![text(1, 7, "count")]).await;
    assert!(matches!(flow, ControlFlow::Break(Ok(()))), "{flow:?}");
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(1));

    let flow = bot.dispatch(dptree::deps![channel_post(2)]).await;
    let ControlFlow::Break(Err(error)) = flow else {
        panic!("expected the NoKey error as a RequestError: {flow:?}");
    };
    assert!(matches!(error, RequestError::Io(_)), "{error:?}");
    assert!(
        matches!(session_error(&error), Some(SessionError::NoKey { .. })),
        "{error}"
    );
}
