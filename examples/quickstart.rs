//! The README's example, running a burst of Telegram-shaped updates from several users
//! through a chain on the memory store.
//!
//! `cargo run --example quickstart`

use std::sync::Arc;

use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(Session, Clone, Debug)]
struct Profile {
    #[default(0)]
    messages: u64,
    #[default(String::from("en"))]
    lang: String,
    last_text: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), typed_session::BoxError> {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Profile, Update>::new(store.clone());
    let chain = Arc::new(
        Chain::new()
            .with(sessions.clone())
            // Commands change the language; every text counts as a message.
            .with_fn(|ctx, next| {
                Box::pin(async move {
                    let session = ctx.session().await?;
                    match ctx.update().text_of() {
                        Some("/de") => session.set_lang("de"),
                        Some("/en") => session.reset_lang(),
                        Some(text) => {
                            session.update_messages(|m| *m += 1);
                            session.set_last_text(Some(text.to_owned()));
                        }
                        None => {}
                    }
                    next.run(ctx).await
                })
            })
            .handler(|ctx| {
                Box::pin(async move {
                    let session = ctx.session().await?;
                    let greeting = if session.lang() == "de" {
                        "Hallo"
                    } else {
                        "Hello"
                    };
                    println!(
                        "  -> reply to {:<14} {greeting}! That was message #{}",
                        session.key(),
                        session.messages()
                    );
                    Ok(())
                })
            }),
    );

    // Three users; Ada switches to German half-way. All 12 updates run concurrently, so
    // updates of the same user share one live session.
    let script = [
        (101, "hi"),
        (202, "hello"),
        (101, "/de"),
        (303, "hey"),
        (101, "wie geht's?"),
        (202, "news?"),
        (303, "/de"),
        (202, "thanks"),
        (101, "danke"),
        (303, "ok"),
        (202, "/de"),
        (202, "tschüss"),
    ];
    println!(
        "handling {} updates from 3 users concurrently",
        script.len()
    );
    let tasks: Vec<_> = script
        .iter()
        .enumerate()
        .map(|(i, &(user, text))| {
            let chain = Arc::clone(&chain);
            tokio::spawn(async move {
                chain
                    .run_update(Update::text(i as i64, user, user, text))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }

    println!("\nwhat the store holds (only fields that were ever changed are stored):");
    for user in [101, 202, 303] {
        let key = format!("{user}:{user}");
        let mut fields: Vec<_> = store.raw(&key).unwrap_or_default().into_iter().collect();
        fields.sort();
        println!("  {key:<14} {fields:?}");
    }
    let stats = sessions.stats();
    println!(
        "\n{} patches written, {} bytes in all; {} sessions still live",
        stats.writes(),
        stats.bytes_written(),
        sessions.live_sessions()
    );
    Ok(())
}
