//! The dialogue example's schema, run by a real teloxide `Dispatcher` polling the Bot API
//! test double: each user's state machine advances one message at a time, a wrong answer is
//! counted and asked again, `/reset` starts over, and the state is in the store after each step.

mod common;

#[path = "../examples/teloxide_dialogue.rs"]
#[allow(dead_code)]
mod dialogue;

use std::time::Duration;

use common::{replies_to, stored};
use dialogue::{Signup, Step};
use teloxide::prelude::{Bot, Dispatcher};
use typed_session::testing::BotApiDouble;
use typed_session::{MemoryStore, SessionMiddleware, telegram};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_state_machine_in_a_session_field_drives_the_dialogue() {
    let telegram = BotApiDouble::start().await.expect("a loopback port");
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Signup, teloxide::types::Update>::new(store.clone());
    let bot = Bot::new(BotApiDouble::TOKEN).set_api_url(telegram.url().parse().expect("a URL"));
    let mut dispatcher = Dispatcher::builder(bot, dialogue::schema(&sessions)).build();
    let stop = dispatcher.shutdown_token();
    let running = tokio::spawn(async move { dispatcher.dispatch().await });

    // Two users at once; one chat's updates are handled in order, so each script is a dialogue.
    let ada = ["hi", "Ada", "36", "anything"];
    let bob = ["hello", "Bob", "old", "41", "/reset", "again"];
    let mut updates = Vec::new();
    for (n, text) in ada.iter().enumerate() {
        updates.push(telegram::Update::text(100 + n as i64, 7, 7, text));
    }
    for (n, text) in bob.iter().enumerate() {
        updates.push(telegram::Update::text(200 + n as i64, 8, 8, text));
    }
    telegram.push(updates).expect("updates are JSON");
    telegram
        .wait_until(Duration::from_secs(30), |seen| {
            seen.sent.len() == ada.len() + bob.len()
        })
        .await
        .expect("one reply per message");
    stop.shutdown().expect("the dispatcher is running").await;
    running.await.expect("no panic");

    assert_eq!(
        replies_to(&telegram, 7),
        [
            "Hi! What is your name?",
            "How old are you, Ada?",
            "Thanks, Ada: 36 it is.",
            "You are Ada, 36. Send /reset to start over.",
        ]
    );
    assert_eq!(
        replies_to(&telegram, 8),
        [
            "Hi! What is your name?",
            "How old are you, Bob?",
            "Send your age as a number, please.",
            "Thanks, Bob: 41 it is.",
            "Forgotten. Say anything to start again.",
            "Hi! What is your name?",
        ]
    );
    assert_eq!(
        stored::<Step>(&store, "Signup:7:7", "step"),
        Some(Step::Done {
            name: "Ada".into(),
            age: 36
        })
    );
    // Bob's `/reset` cleared the session (the refused answer too); "again" started over.
    assert_eq!(
        stored::<Step>(&store, "Signup:8:8", "step"),
        Some(Step::AskName)
    );
    assert_eq!(stored::<u32>(&store, "Signup:8:8", "refused"), None);
    assert_eq!(sessions.live_sessions(), 0);
}
