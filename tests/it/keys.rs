//! "Keys": key strategies, and updates that have no key.

use crate::common;

use std::sync::Arc;

use common::{Counter, CounterAccess, ProbeStore};
use typed_session::telegram::Update;
use typed_session::{
    BoxError, Chain, KeyStrategy, MemoryStore, Session, SessionError, SessionMiddleware,
};

#[tokio::test]
async fn an_update_with_no_key_gets_the_no_key_error_and_nothing_is_read_or_written() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            Ok(())
        })
    });

    // A channel post has a chat but no sender: no "{from.id}:{chat.id}" key.
    let error: BoxError = chain
        .run_update(Update::channel_post(1, -100, "news"))
        .await
        .expect_err("the handler's `?` surfaces the missing key");

    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(
            *error,
            SessionError::NoKey {
                session: "Counter",
                strategy: "user_in_chat"
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("no session key"), "{error}");
    assert_eq!(probe.calls(), 0);
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn a_handler_can_serve_keyless_updates_without_a_session() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = Chain::new().with(sessions).handler(|ctx| {
        Box::pin(async move {
            match ctx.session().await {
                Ok(s) => s.update_count(|c| *c += 1),
                Err(SessionError::NoKey { .. }) => {}
                Err(other) => return Err(other.into()),
            }
            Ok(())
        })
    });

    chain
        .run_update(Update::channel_post(1, -100, "news"))
        .await
        .expect("handled");
    chain
        .run_update(Update::text(2, 7, 7, "hi"))
        .await
        .expect("handled");

    assert_eq!(probe.applies(), 1);
    assert_eq!(probe.patches()[0].key, "Counter:7:7");
}

#[test]
fn the_builtin_strategies_compute_telegraf_compatible_keys() {
    let group_message = Update::text(1, 42, -1001, "hi");
    assert_eq!(
        KeyStrategy::user_in_chat()
            .key_of(&group_message)
            .as_deref(),
        Some("42:-1001")
    );
    assert_eq!(
        KeyStrategy::chat().key_of(&group_message).as_deref(),
        Some("-1001")
    );
    assert_eq!(
        KeyStrategy::user().key_of(&group_message).as_deref(),
        Some("42")
    );

    let post = Update::channel_post(2, -100, "news");
    assert_eq!(KeyStrategy::user_in_chat().key_of(&post), None);
    assert_eq!(KeyStrategy::chat().key_of(&post).as_deref(), Some("-100"));
    assert_eq!(KeyStrategy::user().key_of(&post), None);
}

#[test]
fn updates_parsed_from_bot_api_json_have_keys() {
    let callback: Update = serde_json::from_str(
        r#"{"update_id":10,"callback_query":{"id":"4382","chat_instance":"x",
            "from":{"id":1111,"is_bot":false,"first_name":"A"},
            "message":{"message_id":5,"date":1,"chat":{"id":2222,"type":"group"},"text":"menu"},
            "data":"next"}}"#,
    )
    .expect("valid update");
    assert_eq!(
        KeyStrategy::user_in_chat().key_of(&callback).as_deref(),
        Some("1111:2222")
    );

    let inline: Update = serde_json::from_str(
        r#"{"update_id":11,"inline_query":{"id":"1","from":{"id":3333,"is_bot":false,"first_name":"B"},"query":"q","offset":""}}"#,
    )
    .expect("valid update");
    assert_eq!(KeyStrategy::user().key_of(&inline).as_deref(), Some("3333"));
    assert_eq!(
        KeyStrategy::user_in_chat().key_of(&inline),
        None,
        "an inline query has no chat"
    );
}

#[derive(Session)]
#[session(key = "chat", accessor = "game")]
struct GroupGame {
    round: u32,
}

#[tokio::test]
async fn the_key_strategy_named_in_the_derive_is_the_default_and_a_custom_key_overrides_it() {
    let memory = MemoryStore::new();
    let by_chat = SessionMiddleware::<GroupGame, Update>::new(memory.clone());
    let custom_memory = MemoryStore::new();
    let custom = SessionMiddleware::<GroupGame, Update>::builder(custom_memory.clone())
        .key(KeyStrategy::custom("first_word", |u: &Update| {
            u.text_of()?.split_whitespace().next().map(str::to_owned)
        }))
        .build();
    for (sessions, update) in [
        (by_chat, Update::text(1, 5, -77, "play")),
        (custom, Update::text(2, 5, -77, "lobby one")),
    ] {
        let chain = Chain::new().with(sessions).handler(|ctx| {
            Box::pin(async move {
                ctx.game().await?.update_round(|r| *r += 1);
                Ok(())
            })
        });
        chain.run_update(update).await.expect("ok");
    }

    assert!(memory.raw("GroupGame:-77").is_some(), "keyed by chat");
    assert!(
        custom_memory.raw("GroupGame:lobby").is_some(),
        "keyed by the custom closure"
    );
}

#[tokio::test]
async fn a_handle_and_an_error_name_the_key_as_the_strategy_made_it_without_the_namespace() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let seen = Arc::new(parking_lot::Mutex::new(String::new()));
    let chain = Chain::new().with(sessions.clone()).handler({
        let seen = Arc::clone(&seen);
        move |ctx| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                let counter = ctx.session().await?;
                *seen.lock() = counter.key().to_owned();
                counter.update_count(|c| *c += 1);
                Ok(())
            })
        }
    });
    probe.fail_next_applies(1);
    let error = chain
        .run_update(Update::text(1, 7, -100, "hi"))
        .await
        .expect_err("the save fails");

    assert_eq!(*seen.lock(), "7:-100");
    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(*error, SessionError::Save { ref key, .. } if key == "7:-100"),
        "{error}"
    );
    // Delivered again, it is saved: the store itself holds the record under the namespace.
    chain
        .run_update(Update::text(1, 7, -100, "hi"))
        .await
        .expect("saved");
    assert_eq!(
        probe.patches().last().map(|p| p.key.clone()).as_deref(),
        Some("Counter:7:-100")
    );
}
