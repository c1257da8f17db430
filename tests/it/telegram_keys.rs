//! The key strategies on teloxide-core's `Update`, parsed from payloads shaped as in the Bot
//! API documentation: the updates without a sender or a chat get no key, and asking for their
//! session is the typed error ("Keys").
#![cfg(feature = "telegram")]

use crate::common;

use common::{Counter, CounterAccess};
use serde_json::{Value, json};
use typed_session::teloxide_core::types::Update;
use typed_session::{Chain, KeyStrategy, MemoryStore, SessionError, SessionMiddleware, UpdateKeys};

fn user(id: i64) -> Value {
    json!({"id": id, "is_bot": false, "first_name": "Ada", "language_code": "en"})
}

fn message(chat: Value, from: Option<Value>) -> Value {
    let mut message = json!({"message_id": 5, "date": 1_700_000_000, "chat": chat, "text": "hi"});
    if let Some(from) = from {
        message["from"] = from;
    }
    message
}

fn parse(kind: &str, payload: Value) -> Update {
    // As the webhook and the poller do: from the JSON text (teloxide-core's `Update` does
    // not deserialize from a `serde_json::Value`).
    let update = json!({"update_id": 10, kind: payload}).to_string();
    serde_json::from_str(&update).expect("a Bot API update")
}

fn private_message() -> Update {
    let chat = json!({"id": 42, "type": "private", "first_name": "Ada"});
    parse("message", message(chat, Some(user(42))))
}

fn group_message() -> Update {
    let chat = json!({"id": -1001, "type": "supergroup", "title": "Rustaceans"});
    parse("message", message(chat, Some(user(42))))
}

fn channel_post() -> Update {
    let chat = json!({"id": -1002, "type": "channel", "title": "News"});
    parse("channel_post", message(chat, None))
}

fn inline_query() -> Update {
    parse(
        "inline_query",
        json!({"id": "q1", "from": user(42), "query": "cats", "offset": ""}),
    )
}

fn callback_on_message() -> Update {
    let chat = json!({"id": -1001, "type": "supergroup", "title": "Rustaceans"});
    parse(
        "callback_query",
        json!({
            "id": "c1", "from": user(42), "chat_instance": "ci", "data": "yes",
            "message": message(chat, Some(json!({"id": 1, "is_bot": true, "first_name": "Bot"}))),
        }),
    )
}

fn callback_on_inline_message() -> Update {
    parse(
        "callback_query",
        json!({"id": "c2", "from": user(42), "chat_instance": "ci", "inline_message_id": "im1", "data": "yes"}),
    )
}

fn poll_answer() -> Update {
    parse(
        "poll_answer",
        json!({"poll_id": "p1", "user": user(42), "option_ids": [0]}),
    )
}

/// `(user_in_chat, chat, user)` keys of an update.
fn keys(update: &Update) -> [Option<String>; 3] {
    [
        KeyStrategy::user_in_chat().key_of(update),
        KeyStrategy::chat().key_of(update),
        KeyStrategy::user().key_of(update),
    ]
}

fn some(key: &str) -> Option<String> {
    Some(key.to_owned())
}

#[test]
fn messages_and_callbacks_on_messages_have_every_key() {
    assert_eq!(
        keys(&private_message()),
        [some("42:42"), some("42"), some("42")]
    );
    assert_eq!(
        keys(&group_message()),
        [some("42:-1001"), some("-1001"), some("42")]
    );
    assert_eq!(
        keys(&callback_on_message()),
        [some("42:-1001"), some("-1001"), some("42")]
    );
}

#[test]
fn updates_without_a_sender_or_a_chat_have_only_the_keys_they_can() {
    assert_eq!(keys(&channel_post()), [None, some("-1002"), None]);
    assert_eq!(keys(&inline_query()), [None, None, some("42")]);
    assert_eq!(
        keys(&callback_on_inline_message()),
        [None, None, some("42")]
    );
    assert_eq!(keys(&poll_answer()), [None, None, some("42")]);
}

#[test]
fn update_keys_reads_sender_and_chat() {
    let update = group_message();
    assert_eq!(
        (update.user_id(), update.chat_id()),
        (Some(42), Some(-1001))
    );
}

#[tokio::test]
async fn the_no_key_updates_get_the_typed_error_and_nothing_is_stored() {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            match ctx.session().await {
                Err(SessionError::NoKey { strategy, .. }) => {
                    assert_eq!(strategy, "user_in_chat");
                    Ok(())
                }
                Err(other) => Err(other.into()),
                Ok(_) => Err("an update without a key got a session".into()),
            }
        })
    });
    for update in [
        channel_post(),
        inline_query(),
        callback_on_inline_message(),
        poll_answer(),
    ] {
        chain
            .run_update(update)
            .await
            .expect("the typed NoKey error");
    }
    assert_eq!(sessions.stats().loads(), 0);
    assert_eq!(sessions.stats().writes(), 0);
    assert!(store.is_empty());
}
