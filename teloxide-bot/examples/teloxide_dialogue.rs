//! A teloxide dialogue whose state is an enum field of a typed session, routed with
//! `dptree::case!`: the bot asks for a name and an age, remembers both, and `/reset` starts
//! over. The state lives beside the session's other fields (here, how many answers were
//! refused), in SQLite, and is saved field by field after each update.
//!
//! `TELOXIDE_TOKEN=123456:ABC... cargo run -p teloxide-bot-example --example teloxide_dialogue`
//!
//! `tests/dialogue.rs` runs this same schema inside a real `Dispatcher` against the Bot API
//! test double.

use serde::{Deserialize, Serialize};
use teloxide::dispatching::{DpHandlerDescription, UpdateFilterExt};
use teloxide::prelude::*;
use typed_session::{Session, SessionMiddleware, SqliteStore};

/// Where a user is in the sign-up dialogue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) enum Step {
    #[default]
    Start,
    AskName,
    AskAge {
        name: String,
    },
    Done {
        name: String,
        age: u8,
    },
}

#[derive(Session, Debug)]
pub(crate) struct Signup {
    step: Step,
    /// Answers that were not a valid age.
    refused: u32,
}

/// The dialogue: `attach` once, `load` on the branch that needs the session, then route on
/// the state field.
pub(crate) fn schema(
    sessions: &SessionMiddleware<Signup, Update>,
) -> Handler<'static, ResponseResult<()>, DpHandlerDescription> {
    dptree::entry().chain(sessions.attach()).branch(
        Update::filter_message()
            .chain(sessions.load())
            .branch(
                dptree::filter(|message: Message| message.text() == Some("/reset")).endpoint(reset),
            )
            .map(|signup: SignupHandle<'static>| signup.step())
            .branch(dptree::case![Step::Start].endpoint(start))
            .branch(dptree::case![Step::AskName].endpoint(ask_name))
            .branch(dptree::case![Step::AskAge { name }].endpoint(ask_age))
            .branch(dptree::case![Step::Done { name, age }].endpoint(done)),
    )
}

async fn start(bot: Bot, message: Message, signup: SignupHandle<'static>) -> ResponseResult<()> {
    signup.set_step(Step::AskName);
    bot.send_message(message.chat.id, "Hi! What is your name?")
        .await?;
    Ok(())
}

async fn ask_name(bot: Bot, message: Message, signup: SignupHandle<'static>) -> ResponseResult<()> {
    let Some(name) = message
        .text()
        .map(str::trim)
        .filter(|name| !name.is_empty())
    else {
        bot.send_message(message.chat.id, "Please send your name as text.")
            .await?;
        return Ok(());
    };
    signup.set_step(Step::AskAge {
        name: name.to_owned(),
    });
    bot.send_message(message.chat.id, format!("How old are you, {name}?"))
        .await?;
    Ok(())
}

async fn ask_age(
    bot: Bot,
    message: Message,
    signup: SignupHandle<'static>,
    name: String,
) -> ResponseResult<()> {
    match message
        .text()
        .and_then(|text| text.trim().parse::<u8>().ok())
    {
        Some(age) => {
            signup.set_step(Step::Done {
                name: name.clone(),
                age,
            });
            bot.send_message(message.chat.id, format!("Thanks, {name}: {age} it is."))
                .await?;
        }
        None => {
            signup.update_refused(|n| *n += 1);
            bot.send_message(message.chat.id, "Send your age as a number, please.")
                .await?;
        }
    }
    Ok(())
}

async fn done(bot: Bot, message: Message, (name, age): (String, u8)) -> ResponseResult<()> {
    let answer = format!("You are {name}, {age}. Send /reset to start over.");
    bot.send_message(message.chat.id, answer).await?;
    Ok(())
}

async fn reset(bot: Bot, message: Message, signup: SignupHandle<'static>) -> ResponseResult<()> {
    signup.clear();
    bot.send_message(message.chat.id, "Forgotten. Say anything to start again.")
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), typed_session::BoxError> {
    let token = std::env::var("TELOXIDE_TOKEN")
        .map_err(|_| "set TELOXIDE_TOKEN to the token @BotFather gave your bot")?;
    let store = SqliteStore::connect("sqlite://teloxide-dialogue.db").await?;
    store.migrate().await?;
    let sessions = SessionMiddleware::<Signup, Update>::new(store);

    Dispatcher::builder(Bot::new(token), schema(&sessions))
        .enable_ctrlc_handler()
        .build()
        .dispatch()
        .await;
    sessions.wait_idle().await;
    sessions.flush().await?;
    Ok(())
}
