//! A real Telegram bot on teloxide whose handlers get a typed, field-level session, kept in
//! a SQLite file. It needs a bot token from @BotFather:
//!
//! `TELOXIDE_TOKEN=123456:ABC... cargo run --features teloxide,sqlite --example teloxide_bot`
//!
//! Send it anything: it counts your messages in that chat. `/name Ada` sets the name it greets
//! you with, `/forget` clears your session. Stop it with Ctrl-C: the updates in flight finish
//! and their sessions are written before it exits.

use teloxide::prelude::*;
use typed_session::{BoxError, Session, SessionMiddleware, SqliteStore};

#[derive(Session, Clone, Debug)]
struct Visitor {
    #[default(0)]
    messages: u64,
    name: Option<String>,
}

async fn on_message(
    bot: Bot,
    message: Message,
    visitor: VisitorHandle<'static>,
) -> ResponseResult<()> {
    let text = message.text().unwrap_or_default();
    let answer = if let Some(name) = text.strip_prefix("/name ") {
        visitor.set_name(Some(name.trim().to_owned()));
        format!("Hello, {}!", name.trim())
    } else if text == "/forget" {
        visitor.clear();
        "Forgotten.".to_owned()
    } else {
        let count = visitor.update_messages(|n| {
            *n += 1;
            *n
        });
        let name = visitor.name().unwrap_or_else(|| "stranger".to_owned());
        format!("{name}, that is message {count} in this chat.")
    };
    // The session is written after this handler returns, as one patch of the changed fields.
    bot.send_message(message.chat.id, answer).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let token = std::env::var("TELOXIDE_TOKEN")
        .map_err(|_| "set TELOXIDE_TOKEN to the token @BotFather gave your bot")?;
    let store = SqliteStore::connect("sqlite://teloxide-bot-sessions.db").await?;
    store.migrate().await?;
    let sessions = SessionMiddleware::<Visitor, Update>::new(store);

    let handler = dptree::entry().chain(sessions.attach()).branch(
        Update::filter_message()
            .chain(sessions.load())
            .endpoint(on_message),
    );
    Dispatcher::builder(Bot::new(token), handler)
        .enable_ctrlc_handler()
        .build()
        .dispatch()
        .await;

    // A save that failed while the bot ran is retried once more before exiting.
    sessions.wait_idle().await;
    if let Err(error) = sessions.flush().await {
        eprintln!("stopped; {} sessions are NOT saved", error.unsaved());
        return Err(error.into());
    }
    println!("stopped; every session is saved");
    Ok(())
}
