//! A Telegram bot on long polling, with no framework: the same chain the webhook example
//! serves, fed by `getUpdates`. Each update is confirmed to Telegram only after its session is
//! saved in the SQLite file. It needs a bot token from @BotFather (and no webhook set):
//!
//! `BOT_TOKEN=123456:ABC... cargo run --features polling,sqlite --example polling_bot`
//!
//! `/deleteme` erases every session of its sender (here one type; register each of yours).
//!
//! Ctrl-C stops it gracefully: the batch in flight finishes, its sessions are written, and
//! its offset is confirmed.

use std::sync::Arc;
use std::time::Duration;

use typed_session::telegram::Update;
use typed_session::{
    BoxError, Chain, Erasure, Polling, Session, SessionMiddleware, SqliteStore, UpdateKeys,
};

#[derive(Session, Clone, Debug)]
struct Visits {
    #[default(0)]
    count: u64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let token = std::env::var("BOT_TOKEN")
        .map_err(|_| "set BOT_TOKEN to the token @BotFather gave your bot")?;
    let store = SqliteStore::connect("sqlite://polling-bot-sessions.db").await?;
    store.migrate().await?;

    let visits = SessionMiddleware::<Visits, Update>::new(store);
    let erasure = Arc::new(Erasure::new().register(&visits));
    let chain = Chain::new().with(visits).handler(move |ctx| {
        let erasure = Arc::clone(&erasure);
        Box::pin(async move {
            let message = ctx.update().any_message();
            if let (Some(message), Some(user)) = (message, ctx.update().user_id())
                && message.text.as_deref() == Some("/deleteme")
            {
                // Before this update touches its session: it is erased with the rest.
                let erased = erasure.erase_user(user).await?;
                ctx.reply_with(serde_json::json!({
                    "method": "sendMessage", "chat_id": message.chat.id,
                    "text": format!("forgot you: {} sessions deleted", erased.sessions.len()),
                }));
                return Ok(());
            }
            let visits = ctx.session().await?;
            let count = visits.update_count(|c| {
                *c += 1;
                *c
            });
            if let Some(chat) = ctx.update().any_message().map(|m| m.chat.id) {
                // Sent as a Bot API call once the session is saved.
                ctx.reply_with(serde_json::json!({
                    "method": "sendMessage", "chat_id": chat, "text": format!("visit {count}"),
                }));
            }
            Ok(())
        })
    });

    let stopped = Polling::new(token, chain)
        .timeout(Duration::from_secs(30))
        .max_concurrency(32)
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if stopped.unsaved.is_empty() {
        println!("stopped; every session is saved");
    } else {
        eprintln!(
            "stopped; the sessions of updates {:?} are NOT saved: Telegram delivers them again to the next run",
            stopped.unsaved
        );
    }
    Ok(())
}
