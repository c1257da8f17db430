//! Long polling against a local test double of the Bot API over real HTTP on loopback: every
//! update handled once, replies sent after the save, offsets confirmed only for saved
//! sessions, retries on network errors, bounded concurrency, a rejected token.
//!
//! "Persist after the chain" at the poller: an update is confirmed to Telegram only once its persist is done;
//! "Errors in the chain": a save that fails keeps the session live and the update unconfirmed until a retry
//! writes it. One chat's updates run one at a time, in order; other chats go on meanwhile.
#![cfg(all(feature = "polling", feature = "testing"))]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Counter, CounterAccess, ProbeStore, stored};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Barrier, oneshot};
use typed_session::telegram::Update;
use typed_session::testing::BotApiDouble;
use typed_session::{Chain, MemoryStore, Polling, PollingError, SessionMiddleware, UpdateKeys};

/// How long a test waits for the poller to get somewhere before it fails.
const WAIT: Duration = Duration::from_secs(30);

/// Counts each user's updates and replies with the count.
fn counting(sessions: &SessionMiddleware<Counter, Update>) -> Chain<Update> {
    count_and_reply(Chain::new().with(sessions.clone()))
}

/// `chain`, then a handler that counts the update and replies with the count.
fn count_and_reply(chain: Chain<Update>) -> Chain<Update> {
    chain.handler(|ctx| {
        Box::pin(async move {
            // The count this update made, read under the same lock as the increment.
            let count = ctx.session().await?.update_count(|c| {
                *c += 1;
                *c
            });
            let chat = ctx.update().chat_id().unwrap_or_default();
            ctx.reply_with(json!({
                "method": "sendMessage", "chat_id": chat, "text": count.to_string(),
            }));
            Ok(())
        })
    })
}

/// Holds update 1 until released, and notes when update 2 starts.
#[derive(Default)]
struct Hold {
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
    second_started: AtomicUsize,
}

/// Like [`counting`], with update 1 held by `hold`.
fn counting_held(sessions: &SessionMiddleware<Counter, Update>, hold: &Arc<Hold>) -> Chain<Update> {
    let hold = Arc::clone(hold);
    count_and_reply(
        Chain::new()
            .with(sessions.clone())
            .with_fn(move |ctx, next| {
                let hold = Arc::clone(&hold);
                Box::pin(async move {
                    match ctx.update().update_id {
                        1 => {
                            hold.entered.notify_one();
                            hold.release.notified().await;
                        }
                        2 => {
                            hold.second_started.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    next.run(ctx).await
                })
            }),
    )
}

fn polling(chain: Chain<Update>, api: &str) -> Polling<Update> {
    Polling::new(BotApiDouble::TOKEN, chain)
        .api_url(api)
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
}

/// Starts `polling`; the returned sender stops it.
fn spawn(
    polling: Polling<Update>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<typed_session::polling::Stopped, PollingError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(polling.run(async {
        let _ = stopped.await;
    }));
    (stop, run)
}

/// The offset the poller confirmed: the highest it sent. A `getUpdates` it dropped at
/// shutdown can reach the double after the one that confirms (they travel on different
/// connections), so the last one recorded is not always the highest; Telegram, like the
/// double, forgets what a higher offset confirmed, whatever comes after it.
fn confirmed(fake: &BotApiDouble) -> Option<i64> {
    fake.seen(|s| s.offsets.iter().max().copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_is_handled_once_replied_to_and_confirmed() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    fake.push((1..=30).map(|id| Update::text(id, 100 + id % 3, 100 + id % 3, "hi")))
        .expect("updates are JSON");

    let (stop, run) = spawn(polling(counting(&sessions), &api));
    fake.wait_until(WAIT, |s| s.sent.len() == 30)
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    for user in 100..103 {
        let key = format!("{user}:{user}");
        assert_eq!(stored::<u64>(&store, &key, "count"), Some(10), "{key}");
        // One chat's updates run one at a time, in order: its replies count up.
        let replies: Vec<String> = fake.seen(|s| {
            s.sent
                .iter()
                .filter(|m| m.chat_id == user)
                .map(|m| m.text.clone())
                .collect()
        });
        let expected: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
        assert_eq!(replies, expected, "replies to {user}");
    }
    assert_eq!(confirmed(&fake), Some(31));
    assert!(fake.seen(|s| s.pending.is_empty()), "all 30 confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_holds_the_offset_back_until_a_retry_saves_it() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    probe.fail_next_applies(3);
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    fake.push((1..=3).map(|id| Update::text(id, 7, 7, "hi")))
        .expect("updates are JSON");

    // What the store held whenever the poller asked with an offset past update 1.
    let seen_past_1 = Arc::new(Mutex::new(Vec::new()));
    fake.on_get_updates({
        let (memory, seen) = (memory.clone(), Arc::clone(&seen_past_1));
        move |offset| {
            if offset > 1 {
                seen.lock()
                    .push((offset, stored::<u64>(&memory, "7:7", "count")));
            }
        }
    });

    let (stop, run) = spawn(polling(counting(&sessions), &api));
    fake.wait_until(WAIT, |s| s.offsets.contains(&4))
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    // No offset confirmed an update before its save: offset `o` confirms updates 1 to o - 1,
    // and the store held at least that many increments whenever one was sent. The failed
    // saves took their writes back and the update ran again: each counted once.
    let seen = seen_past_1.lock().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|&(offset, count)| count.unwrap_or(0) >= offset as u64 - 1),
        "{seen:?}"
    );
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(3));
    assert_eq!(
        probe.applies(),
        6,
        "three refused, then one save per update"
    );
    assert_eq!(sessions.unsaved_sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_while_a_save_fails_it_confirms_only_what_was_saved_and_the_rest_comes_again() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let (stop, stopped) = oneshot::channel::<()>();
    let stop = Arc::new(Mutex::new(Some(stop)));
    // Update 2 (user 8) breaks the store and asks for shutdown.
    let chain = Chain::new().with(sessions.clone()).handler({
        let (probe, stop) = (Arc::clone(&probe), Arc::clone(&stop));
        move |ctx| {
            let (probe, stop) = (Arc::clone(&probe), Arc::clone(&stop));
            Box::pin(async move {
                ctx.session().await?.update_count(|c| *c += 1);
                if ctx.update().update_id == 2 {
                    probe.fail_next_applies(usize::MAX);
                    if let Some(stop) = stop.lock().take() {
                        let _ = stop.send(());
                    }
                }
                Ok(())
            })
        }
    });
    fake.push([Update::text(1, 7, 7, "hi"), Update::text(2, 8, 8, "hi")])
        .expect("updates are JSON");
    let first = polling(chain, &api).max_concurrency(1);
    let report = first
        .run(async {
            let _ = stopped.await;
        })
        .await
        .expect("polling ends cleanly");
    assert_eq!(
        report.unsaved,
        [2],
        "the run says which update is not saved"
    );

    assert_eq!(confirmed(&fake), Some(2));
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(stored::<u64>(&memory, "8:8", "count"), None);
    assert_eq!(
        fake.seen(|s| s.pending.len()),
        1,
        "update 2 is still Telegram's"
    );

    // The next run (the store is back) gets update 2 again and saves it once.
    let store = MemoryStore::new();
    let restarted = SessionMiddleware::<Counter, Update>::new(store.clone());
    let (stop, run) = spawn(polling(counting(&restarted), &api));
    fake.wait_until(WAIT, |s| s.sent.len() == 1)
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");
    assert_eq!(stored::<u64>(&store, "8:8", "count"), Some(1));
    assert_eq!(confirmed(&fake), Some(3));
    assert_eq!(fake.seen(|s| s.pending.len()), 0, "update 2 is confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_are_retried_with_backoff() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    fake.fail_get_updates(3);
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    fake.push([Update::text(1, 7, 7, "hi")])
        .expect("updates are JSON");

    let (stop, run) = spawn(polling(counting(&sessions), &api));
    fake.wait_until(WAIT, |s| s.sent.len() == 1)
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    assert_eq!(fake.seen(|s| s.offsets[..4].to_vec()), vec![0, 0, 0, 0]);
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(1));
}

#[tokio::test]
async fn a_rejected_token_ends_polling_with_an_error() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    fake.reject_token(true);
    let sessions = SessionMiddleware::<Counter, Update>::new(MemoryStore::new());

    let result = polling(counting(&sessions), &api)
        .run(std::future::pending())
        .await;
    match result {
        Err(PollingError::Unauthorized { code, description }) => {
            assert_eq!((code, description.as_str()), (401, "Unauthorized"));
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_at_most_max_concurrency_updates_at_once() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    // Handlers meet in pairs: with fewer than two at once they would wait forever.
    let pairs = Arc::new(Barrier::new(2));
    let chain = Chain::new().with(sessions.clone()).handler({
        let (running, most, pairs) = (running.clone(), most.clone(), pairs.clone());
        move |ctx| {
            let (running, most, pairs) = (running.clone(), most.clone(), pairs.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                pairs.wait().await;
                ctx.session().await?.update_count(|c| *c += 1);
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    });
    fake.push((1..=8).map(|id| Update::text(id, 200 + id, 200 + id, "hi")))
        .expect("updates are JSON");

    let (stop, run) = spawn(polling(chain, &api).max_concurrency(2));
    fake.wait_until(WAIT, |s| s.offsets.contains(&9))
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    assert_eq!(most.load(Ordering::SeqCst), 2);
    for id in 1..=8 {
        let key = format!("{0}:{0}", 200 + id);
        assert_eq!(stored::<u64>(&store, &key, "count"), Some(1), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_wait_is_retried_after_telegrams_retry_after_not_the_backoff() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    fake.flood_get_updates(2);
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    fake.push([Update::text(1, 7, 7, "hi")])
        .expect("updates are JSON");

    // A backoff of a minute: only `retry_after` (0 s) lets the update through in time.
    let patient = polling(counting(&sessions), &api)
        .backoff(Duration::from_secs(60), Duration::from_secs(60));
    let (stop, run) = spawn(patient);
    fake.wait_until(WAIT, |s| s.sent.len() == 1)
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    assert_eq!(fake.seen(|s| s.offsets[..3].to_vec()), vec![0, 0, 0]);
    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(1));
}

/// teloxide-core's `Update`, parsed from the double's JSON by the poller.
#[cfg(feature = "telegram")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teloxide_core_updates_are_polled_too() {
    use typed_session::teloxide_core::types::Update as TgUpdate;

    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let store = MemoryStore::new();
    let chain = Chain::new()
        .with(SessionMiddleware::<Counter, TgUpdate>::new(store.clone()))
        .handler(|ctx| {
            Box::pin(async move {
                let count = ctx.session().await?.update_count(|c| {
                    *c += 1;
                    *c
                });
                ctx.reply_with(json!({
                    "method": "sendMessage", "chat_id": ctx.update().chat_id(), "text": count.to_string(),
                }));
                Ok(())
            })
        });
    fake.push((1..=3).map(|id| Update::text(id, 7, 7, "hi")))
        .expect("updates are JSON");

    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(
        Polling::new(BotApiDouble::TOKEN, chain)
            .api_url(&api)
            .timeout(Duration::from_secs(5))
            .run(async {
                let _ = stopped.await;
            }),
    );
    fake.wait_until(WAIT, |s| s.sent.len() == 3)
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(3));
    assert_eq!(confirmed(&fake), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_update_does_not_hold_back_the_next_ones_only_the_offset() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let hold = Arc::new(Hold::default());
    let chain = counting_held(&sessions, &hold);
    fake.push([Update::text(1, 7, 7, "slow")])
        .expect("updates are JSON");
    let (stop, run) = spawn(polling(chain, &api));
    hold.entered.notified().await;

    // While update 1 runs, updates 2 and 3 arrive, are handled and answered.
    fake.push([Update::text(2, 8, 8, "hi"), Update::text(3, 9, 9, "hi")])
        .expect("updates are JSON");
    fake.wait_until(WAIT, |s| s.sent.len() == 2)
        .await
        .expect("the poller got there");
    let chats: Vec<i64> = fake.seen(|s| s.sent.iter().map(|m| m.chat_id).collect());
    assert_eq!(
        chats.iter().filter(|&&c| c == 8 || c == 9).count(),
        2,
        "{chats:?}"
    );
    // ... but nothing past update 1 is confirmed while it runs.
    assert!(
        fake.seen(|s| s.offsets.iter().all(|&o| o <= 1)),
        "{:?}",
        fake.seen(|s| s.offsets.clone())
    );

    hold.release.notify_one();
    fake.wait_until(WAIT, |s| s.sent.len() == 3 && s.offsets.contains(&4))
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");
    for user in [7, 8, 9] {
        let key = format!("{user}:{user}");
        assert_eq!(stored::<u64>(&store, &key, "count"), Some(1), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chats_updates_run_one_at_a_time_in_order_while_other_chats_go_on() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let hold = Arc::new(Hold::default());
    let chain = counting_held(&sessions, &hold);
    fake.push([Update::text(1, 7, 7, "first")])
        .expect("updates are JSON");
    let (stop, run) = spawn(polling(chain, &api));
    hold.entered.notified().await;

    fake.push([
        Update::text(2, 7, 7, "second"),
        Update::text(3, 8, 8, "other chat"),
    ])
    .expect("updates are JSON");
    fake.wait_until(WAIT, |s| s.sent.iter().any(|m| m.chat_id == 8))
        .await
        .expect("the poller got there");
    assert_eq!(
        hold.second_started.load(Ordering::SeqCst),
        0,
        "update 2 waits for update 1 of its chat"
    );

    hold.release.notify_one();
    fake.wait_until(WAIT, |s| s.sent.len() == 3)
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");
    let chat_7: Vec<String> = fake.seen(|s| {
        s.sent
            .iter()
            .filter(|m| m.chat_id == 7)
            .map(|m| m.text.clone())
            .collect()
    });
    assert_eq!(chat_7, ["1", "2"]);
    assert_eq!(confirmed(&fake), Some(4));
}

/// Under the strict stale-write policy the update fails, but its session was saved: the
/// poller confirms it (a failed handler is logged and confirmed) instead of holding it back
/// as unsaved.
#[tokio::test]
async fn a_strict_stale_write_is_saved_and_confirmed_not_held_as_unsaved() {
    let (logs, _capture) = common::logs::Logs::capture();
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(store.clone())
        .on_stale_write(typed_session::StalePolicy::Error)
        .build();
    let chain = common::stale_writer(&sessions, 99);
    fake.push([Update::text(1, 7, 7, "hi")])
        .expect("updates are JSON");

    let (stop, run) = spawn(polling(chain, &api));
    fake.wait_until(WAIT, |s| s.pending.is_empty())
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");

    assert_eq!(stored::<u64>(&store, "7:7", "count"), Some(1), "saved");
    assert_eq!(sessions.unsaved_sessions(), 0);
    assert!(logs.contain("update failed"), "{:?}", logs.lines());
    assert!(
        !logs.contain("not saved"),
        "not reported as unsaved: {:?}",
        logs.lines()
    );
}

/// Saves that keep failing past the runs an update gets at once: the update stays
/// unconfirmed, the poller runs it again (from its text) before taking anything new, and once
/// the store is back each update counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_whose_saves_keep_failing_run_again_later_and_count_once() {
    let fake = BotApiDouble::start().await.expect("a loopback port");
    let api = fake.url().to_owned();
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    probe.fail_next_applies(25);
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    fake.push([Update::text(1, 7, 7, "hi"), Update::text(2, 8, 8, "hi")])
        .expect("updates are JSON");

    let (stop, run) = spawn(polling(counting(&sessions), &api));
    fake.wait_until(WAIT, |s| s.pending.is_empty())
        .await
        .expect("the poller got there");
    stop.send(()).expect("the poller is running");
    let report = run.await.expect("no panic").expect("polling ends cleanly");

    assert!(report.unsaved.is_empty(), "{:?}", report.unsaved);
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(stored::<u64>(&memory, "8:8", "count"), Some(1));
    assert_eq!(probe.applies(), 27, "25 refused, then one save each");
}

/// A Bot API that cannot be reached: the retry warning names the cause (the refused
/// connection, not just "error sending request"), and never the token.
#[tokio::test(flavor = "current_thread")]
async fn a_network_error_is_logged_with_its_cause_and_without_the_token() {
    let (logs, _guard) = common::logs::Logs::capture();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let sessions = SessionMiddleware::<Counter, Update>::new(MemoryStore::new());
    let (stop, run) = {
        let (stop, stopped) = oneshot::channel::<()>();
        let polling = polling(counting(&sessions), &format!("http://127.0.0.1:{port}"));
        (
            stop,
            tokio::spawn(polling.run(async {
                let _ = stopped.await;
            })),
        )
    };
    let started = std::time::Instant::now();
    while !logs.contain("getUpdates failed") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no retry was logged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).expect("the poller is running");
    run.await.expect("no panic").expect("polling ends cleanly");
    let line = logs
        .lines()
        .into_iter()
        .find(|line| line.contains("getUpdates failed"))
        .expect("logged");
    assert!(line.contains("Connection refused"), "{line}");
    assert!(
        !line.contains(BotApiDouble::TOKEN),
        "the token leaked: {line}"
    );
}
