//! The load the failover tests put on a store while they break its servers: one writer per
//! user adding one to `Counter::count`, each update delivered again until it is acknowledged
//! (as Telegram does), every delivery recorded in a history for the exactly-once checker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use typed_session::telegram::Update;
use typed_session::{Chain, Context, SessionMiddleware, Store};

use super::history::{self, Event, History};
use super::{Counter, CounterAccess, outcome_of};

/// The count each delivery's handler made, by (update, delivery), and whether the delivery
/// was recognised as one of an update saved before.
type Made = Arc<parking_lot::Mutex<HashMap<(i64, u32), (u64, bool)>>>;

/// The session key of `user`'s private chat.
pub fn key_of(user: i64) -> String {
    format!("Counter:{user}:{user}")
}

/// How one writer ended.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub user: i64,
    /// Updates acknowledged.
    pub acked: u64,
    /// The longest an update took, from its first delivery to its acknowledgement, among
    /// those started after the fault.
    pub longest_after_fault: Duration,
}

/// Writers running: `users` of them, each until it has 400 updates acknowledged and 150 of
/// them after [`Load::fault`].
pub struct Load {
    pub history: Arc<History>,
    faulted: Arc<AtomicBool>,
    loaded: Arc<tokio::sync::Barrier>,
    writers: tokio::task::JoinSet<Written>,
}

impl Load {
    pub fn start(sessions: &SessionMiddleware<Counter, Update>, users: i64) -> Load {
        let made = Made::default();
        let chain = counting(sessions, Arc::clone(&made));
        let history = Arc::new(History::new(History::wall_clock));
        let faulted = Arc::new(AtomicBool::new(false));
        let loaded = Arc::new(tokio::sync::Barrier::new(users as usize + 1));
        let mut writers = tokio::task::JoinSet::new();
        for user in 1..=users {
            let (chain, faulted, loaded) =
                (chain.clone(), Arc::clone(&faulted), Arc::clone(&loaded));
            let (made, history) = (Arc::clone(&made), Arc::clone(&history));
            writers.spawn(async move {
                let (mut acked, mut longest) = (0u64, Duration::ZERO);
                let mut id = user * 1_000_000;
                let mut after_fault = 0;
                while acked < 400 || after_fault < 150 {
                    id += 1;
                    let took = deliver((&chain, &made, &history), id, user).await;
                    acked += 1;
                    if acked == 100 {
                        loaded.wait().await;
                    }
                    if faulted.load(Ordering::Acquire) {
                        after_fault += 1;
                        longest = longest.max(took);
                    }
                }
                Written {
                    user,
                    acked,
                    longest_after_fault: longest,
                }
            });
        }
        Load {
            history,
            faulted,
            loaded,
            writers,
        }
    }

    /// Returns once every writer has 100 updates acknowledged: the load is on.
    pub async fn loaded(&self) {
        self.loaded.wait().await;
    }

    /// Marks the fault as made: from now on the writers count their updates after it.
    pub fn fault(&self) -> Instant {
        self.faulted.store(true, Ordering::Release);
        Instant::now()
    }

    pub async fn finish(mut self) -> (Vec<Written>, Arc<History>) {
        let mut done = Vec::new();
        while let Some(written) = self.writers.join_next().await {
            done.push(written.expect("no writer panics"));
        }
        (done, self.history)
    }
}

/// The exactly-once checker's complaints about `user`'s history, the store holding `stored`.
pub fn violations_of(history: &History, user: i64, stored: u64) -> Vec<String> {
    let events: Vec<Event> = history
        .events()
        .into_iter()
        .filter(|event| event.key == key_of(user))
        .collect();
    history::check_counter(&events, stored)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The count `store` holds for `user` after the fault, checked against the `acked` updates
/// told saved: more would be an update applied twice.
pub async fn stored_count(store: &impl Store, user: i64, acked: u64) -> u64 {
    let stored = store
        .load(&key_of(user))
        .await
        .expect("load after the failover")
        .and_then(|record| {
            record
                .get("count")
                .map(|c| c.parse::<u64>().expect("a count"))
        })
        .unwrap_or(0);
    assert!(
        stored <= acked,
        "user {user}: stored {stored} > acknowledged {acked}: an update was applied twice"
    );
    stored
}

/// How many deliveries `history` holds.
pub fn deliveries(history: &History) -> usize {
    history.events().len()
}

/// A chain that adds one to `count` and notes what it made.
fn counting(sessions: &SessionMiddleware<Counter, Update>, made: Made) -> Chain<Update> {
    Chain::new().with(sessions.clone()).handler(move |ctx| {
        let made = Arc::clone(&made);
        Box::pin(async move {
            let counter = ctx.session().await?;
            let count = counter.update_count(|c| {
                *c += 1;
                *c
            });
            let delivery = ctx
                .update()
                .text_of()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            made.lock().insert(
                (ctx.update().update_id, delivery),
                (count, counter.is_redelivery()),
            );
            Ok(())
        })
    })
}

/// Delivers update `id` of `user` until it is acknowledged, as Telegram does, recording each
/// delivery in `history`; returns how long it took from the first attempt.
async fn deliver(
    (chain, made, history): (&Chain<Update>, &Made, &History),
    id: i64,
    user: i64,
) -> Duration {
    let started = Instant::now();
    let mut delivery = 0;
    loop {
        delivery += 1;
        let invoked = history.now();
        let ctx = Context::new(Update::text(id, user, user, &delivery.to_string()));
        let result = chain.run(&ctx).await;
        let ended = history.now();
        let mine = made.lock().remove(&(id, delivery));
        let recognised = mine.is_some_and(|(_, recognised)| recognised);
        history.record(Event::counted(
            (0, key_of(user)),
            (id, delivery),
            (invoked, ended),
            outcome_of(&result, recognised),
            mine.filter(|_| !recognised).map(|(count, _)| count),
        ));
        if result.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "update {id} of {user} never went through"
        );
        // Telegram's redelivery is not immediate either.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
