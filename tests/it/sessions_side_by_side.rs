//! Two session types with their own accessors, keys and stores do not interfere.

use std::sync::Arc;

use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(Session)]
#[session(accessor = "profile", key = "user")]
struct Profile {
    #[default(String::from("en"))]
    lang: String,
    messages: u32,
}

#[derive(Session)]
#[session(accessor = "group", key = "chat")]
struct Group {
    messages: u32,
    #[session(skip)]
    typing: bool,
}

#[tokio::test]
async fn two_session_types_keep_their_own_keys_stores_and_fields() {
    let (profiles, groups) = (MemoryStore::new(), MemoryStore::new());
    let chain = Arc::new(
        Chain::new()
            .with(SessionMiddleware::<Profile, Update>::new(profiles.clone()))
            .with(SessionMiddleware::<Group, Update>::new(groups.clone()))
            .handler(|ctx| {
                Box::pin(async move {
                    let (me, group) = (ctx.profile().await?, ctx.group().await?);
                    me.update_messages(|m| *m += 1);
                    group.update_messages(|m| *m += 1);
                    group.set_typing(true);
                    if ctx.update().text_of() == Some("/de") {
                        me.set_lang("de");
                    }
                    Ok(())
                })
            }),
    );

    // Two users in one group, one of them also in a private chat.
    for (i, (user, chat, text)) in [
        (1, -50, "hi"),
        (2, -50, "/de"),
        (1, 1, "hello"),
        (1, -50, "bye"),
    ]
    .into_iter()
    .enumerate()
    {
        chain
            .run_update(Update::text(i as i64, user, chat, text))
            .await
            .expect("ok");
    }

    // Each type's records are stored under its namespace, its name unless it names another.
    let field =
        |store: &MemoryStore, key: &str, f: &str| store.raw(key).and_then(|mut r| r.remove(f));
    assert_eq!(
        field(&profiles, "Profile:1", "messages").as_deref(),
        Some("3")
    );
    assert_eq!(
        field(&profiles, "Profile:2", "lang").as_deref(),
        Some("\"de\"")
    );
    assert_eq!(
        field(&groups, "Group:-50", "messages").as_deref(),
        Some("3")
    );
    assert_eq!(field(&groups, "Group:1", "messages").as_deref(), Some("1"));
    assert_eq!(
        field(&groups, "Group:-50", "typing"),
        None,
        "skipped fields are never stored"
    );
    assert_eq!((profiles.len(), groups.len()), (2, 2));
}

#[derive(Session)]
#[session(accessor = "per_user", key = "user")]
struct PerUser {
    count: u64,
}

#[derive(Session)]
#[session(accessor = "per_chat", key = "chat")]
struct PerChat {
    count: u64,
}

/// In a private chat the user id is the chat id, so a per-user and a per-chat session type
/// have the same key: on one store they still never share a record, and clearing one
/// leaves the other.
#[tokio::test]
async fn two_session_types_on_one_store_never_share_a_record() {
    let store = MemoryStore::new();
    let chain = Chain::new()
        .with(SessionMiddleware::<PerUser, Update>::new(store.clone()))
        .with(SessionMiddleware::<PerChat, Update>::new(store.clone()))
        .handler(|ctx| {
            Box::pin(async move {
                ctx.per_user().await?.update_count(|c| *c += 1);
                let chat = ctx.per_chat().await?;
                chat.update_count(|c| *c += 1);
                if ctx.update().text_of() == Some("/reset-chat") {
                    chat.clear();
                }
                Ok(())
            })
        });

    for id in 0..3 {
        chain
            .run_update(Update::text(id, 9, 9, "hi"))
            .await
            .expect("ok");
    }
    let count = |key: &str| store.raw(key).and_then(|mut r| r.remove("count"));
    assert_eq!(count("PerUser:9").as_deref(), Some("3"));
    assert_eq!(count("PerChat:9").as_deref(), Some("3"), "not 6");

    chain
        .run_update(Update::text(3, 9, 9, "/reset-chat"))
        .await
        .expect("ok");
    assert_eq!(count("PerChat:9"), None, "the chat's session is cleared");
    assert_eq!(
        count("PerUser:9").as_deref(),
        Some("4"),
        "the user's is not"
    );
}
