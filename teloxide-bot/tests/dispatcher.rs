//! The example bot's framework, for real: a teloxide `Dispatcher` polling the Bot API test
//! double (the Telegram servers cannot be part of a test run), with sessions from one `attach`
//! line. It lives here, beside the teloxide example, so that only this crate builds teloxide.

mod common;

use std::time::Duration;

use common::{replies_to, stored};
use typed_session::dptree;
use typed_session::teloxide_core::types::{Message, Update};
use typed_session::testing::BotApiDouble;
use typed_session::{BoxError, MemoryStore, Session, SessionMiddleware, telegram};

#[derive(Session)]
struct Counter {
    count: u64,
}

/// A real teloxide `Dispatcher`, polling the local Bot API test double: the one `attach` line
/// gives its handlers the typed session, and every update's change is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teloxide_dispatcher_gets_field_level_sessions_from_one_line() {
    use teloxide::dispatching::UpdateFilterExt;
    use teloxide::prelude::{Bot, Dispatcher, Requester};

    let telegram = BotApiDouble::start().await.expect("a loopback port");
    telegram
        .push((1..=6).map(|id| telegram::Update::text(id, 7 + id % 2, 7 + id % 2, "count")))
        .expect("updates are JSON");
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());

    let handler = dptree::entry().chain(sessions.attach()).branch(
        Update::filter_message().chain(sessions.load()).endpoint(
            |bot: Bot, message: Message, counter: CounterHandle<'static>| async move {
                let count = counter.update_count(|c| {
                    *c += 1;
                    *c
                });
                bot.send_message(message.chat.id, count.to_string()).await?;
                Ok::<(), BoxError>(())
            },
        ),
    );
    let bot = Bot::new(BotApiDouble::TOKEN)
        .set_api_url(telegram.url().parse().expect("the double's URL"));
    let mut dispatcher = Dispatcher::builder(bot, handler).build();
    let shutdown = dispatcher.shutdown_token();
    let running = tokio::spawn(async move { dispatcher.dispatch().await });

    telegram
        .wait_until(Duration::from_secs(30), |seen| seen.sent.len() == 6)
        .await
        .expect("six replies");
    shutdown
        .shutdown()
        .expect("the dispatcher is running")
        .await;
    running.await.expect("no panic");

    for user in [7, 8] {
        let key = format!("Counter:{user}:{user}");
        assert_eq!(stored::<u64>(&store, &key, "count"), Some(3), "{key}");
        let mut replies = replies_to(&telegram, user);
        replies.sort();
        assert_eq!(replies, ["1", "2", "3"], "replies to {user}");
    }
    assert_eq!(sessions.live_sessions(), 0);
}
