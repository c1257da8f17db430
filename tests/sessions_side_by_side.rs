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

    let field =
        |store: &MemoryStore, key: &str, f: &str| store.raw(key).and_then(|mut r| r.remove(f));
    assert_eq!(field(&profiles, "1", "messages").as_deref(), Some("3"));
    assert_eq!(field(&profiles, "2", "lang").as_deref(), Some("\"de\""));
    assert_eq!(field(&groups, "-50", "messages").as_deref(), Some("3"));
    assert_eq!(field(&groups, "1", "messages").as_deref(), Some("1"));
    assert_eq!(
        field(&groups, "-50", "typing"),
        None,
        "skipped fields are never stored"
    );
    assert_eq!((profiles.len(), groups.len()), (2, 2));
}
