//! The webhook server over real HTTP on loopback: answers only after the session is saved,
//! loses nothing under 100 concurrent posts for one chat, refuses bad input without
//! stopping, and shuts down gracefully.
//!
//! "Persist after the chain" at the HTTP boundary: the answer is sent after the persist, so the webhook reply
//! and a second replica reading the same store both see the saved value; "Sharing" under 100
//! concurrent posts of one chat.
#![cfg(feature = "webhook")]

use crate::common;

use std::sync::Arc;

use common::{Counter, CounterAccess, stored};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use typed_session::axum::http::StatusCode;
use typed_session::telegram::Update;
use typed_session::{BoxError, Chain, MemoryStore, SessionMiddleware, Webhook};

const SECRET: &str = "s3cr3t-token";

/// A text message as Telegram posts it (shape from the Bot API documentation).
fn telegram_update(update_id: i64, user: i64, text: &str) -> String {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user, "is_bot": false, "first_name": "Ada", "language_code": "en"},
            "chat": {"id": user, "first_name": "Ada", "type": "private"},
            "date": 1_700_000_000,
            "text": text
        }
    })
    .to_string()
}

/// One HTTP/1.1 request; returns the status and the body.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    secret: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let secret = secret.map_or(String::new(), |s| {
        format!("X-Telegram-Bot-Api-Secret-Token: {s}\r\n")
    });
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{secret}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("receive");
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Serves `webhook` on a free loopback port until the returned sender is used (or dropped);
/// returns the address, that sender, and the server's task.
async fn spawn_webhook<U>(
    webhook: Webhook<U>,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)
where
    U: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(webhook.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, served)
}

struct Server {
    addr: std::net::SocketAddr,
    store: MemoryStore,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Lets a test hold handlers: each says when it has entered, then waits to be released.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

/// A webhook whose handler counts messages, replies with the count, and fails on "fail".
/// With a gate, every handler waits at it after writing its session.
async fn start(gate: Option<Gate>) -> Server {
    let store = MemoryStore::new();
    let chain = Chain::new()
        .with(SessionMiddleware::<Counter, Update>::new(store.clone()))
        .handler(move |ctx| {
            let gate = gate.clone();
            Box::pin(async move {
                let session = ctx.session().await?;
                session.update_count(|c| *c += 1);
                if let Some(gate) = gate {
                    gate.entered.notify_one();
                    gate.release.notified().await;
                }
                if ctx.update().text_of() == Some("fail") {
                    return Err::<(), BoxError>("the handler failed".into());
                }
                let chat = ctx.update().any_message().map(|m| m.chat.id);
                ctx.reply_with(serde_json::json!({
                    "method": "sendMessage", "chat_id": chat, "text": format!("message {}", session.count())
                }));
                Ok(())
            })
        });
    let webhook = Webhook::new(chain)
        .path("/tg")
        .secret_token(SECRET)
        .expect("a valid token")
        .body_limit(4096);
    let (addr, stop, done) = spawn_webhook(webhook).await;
    Server {
        addr,
        store,
        stop: Some(stop),
        done,
    }
}

#[tokio::test]
async fn a_posted_update_is_answered_with_the_webhook_reply_after_its_session_is_saved() {
    let server = start(None).await;

    let (status, body) = post(
        server.addr,
        "/tg",
        Some(SECRET),
        &telegram_update(1, 42, "hi"),
    )
    .await;

    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).expect("a JSON reply");
    assert_eq!(
        reply,
        serde_json::json!({"method": "sendMessage", "chat_id": 42, "text": "message 1"})
    );
    // By the time the answer arrived, the session was in the store.
    assert_eq!(stored::<u64>(&server.store, "42:42", "count"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_posts_for_one_chat_lose_nothing() {
    let server = start(None).await;
    let posts: Vec<_> = (0..100)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                post(addr, "/tg", Some(SECRET), &telegram_update(i, 7, "+1"))
                    .await
                    .0
            })
        })
        .collect();
    for post in posts {
        assert_eq!(post.await.expect("no panic"), 200);
    }
    assert_eq!(stored::<u64>(&server.store, "7:7", "count"), Some(100));
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let server = start(None).await;
    let good = telegram_update(1, 9, "hi");

    assert_eq!(
        post(server.addr, "/tg", None, &good).await.0,
        401,
        "missing secret"
    );
    assert_eq!(
        post(server.addr, "/tg", Some("wrong-token!"), &good)
            .await
            .0,
        401,
        "wrong secret"
    );
    assert_eq!(
        post(server.addr, "/tg", Some(SECRET), "{not json").await.0,
        400,
        "malformed JSON"
    );
    assert_eq!(
        post(server.addr, "/tg", Some(SECRET), "{\"message\": 1}")
            .await
            .0,
        400,
        "not an update"
    );
    let big = telegram_update(2, 9, &"x".repeat(5000));
    assert_eq!(
        post(server.addr, "/tg", Some(SECRET), &big).await.0,
        413,
        "over the body limit"
    );
    assert_eq!(
        server.store.raw("Counter:9:9"),
        None,
        "nothing was run for them"
    );

    assert_eq!(
        post(server.addr, "/tg", Some(SECRET), &good).await.0,
        200,
        "still serving"
    );
    assert_eq!(stored::<u64>(&server.store, "9:9", "count"), Some(1));
}

#[tokio::test]
async fn a_handler_error_gets_the_error_status_and_the_session_is_still_persisted() {
    let server = start(None).await;

    let (status, _) = post(
        server.addr,
        "/tg",
        Some(SECRET),
        &telegram_update(1, 5, "fail"),
    )
    .await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR.as_u16());
    assert_eq!(
        stored::<u64>(&server.store, "5:5", "count"),
        Some(1),
        "ErrorPolicy::Save"
    );
}

#[tokio::test]
async fn shutdown_lets_the_update_in_flight_finish_and_persist() {
    let gate = Gate::default();
    let mut server = start(Some(gate.clone())).await;
    let addr = server.addr;
    let in_flight =
        tokio::spawn(
            async move { post(addr, "/tg", Some(SECRET), &telegram_update(1, 3, "hi")).await },
        );

    gate.entered.notified().await; // the handler holds its session, not yet persisted
    server
        .stop
        .take()
        .expect("not stopped yet")
        .send(())
        .expect("the server listens for it");
    assert_eq!(server.store.raw("Counter:3:3"), None);
    gate.release.notify_one();

    let (status, _) = in_flight.await.expect("no panic");
    assert_eq!(status, 200);
    server
        .done
        .await
        .expect("no panic")
        .expect("served and stopped cleanly");
    assert_eq!(stored::<u64>(&server.store, "3:3", "count"), Some(1));
}

/// The same server with teloxide-core's `Update`: a real callback-query payload is parsed, and
/// a channel post (no sender, so no per-user-in-chat key) is answered without a session.
#[cfg(feature = "telegram")]
#[tokio::test]
async fn teloxide_core_updates_are_served_too() {
    use typed_session::UpdateKeys;
    use typed_session::teloxide_core::types::Update as TgUpdate;

    let store = MemoryStore::new();
    let chain = Chain::new()
        .with(SessionMiddleware::<Counter, TgUpdate>::new(store.clone()))
        .handler(|ctx| {
            Box::pin(async move {
                match ctx.session().await {
                    Ok(session) => session.update_count(|c| *c += 1),
                    Err(typed_session::SessionError::NoKey { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
                ctx.reply_with(serde_json::json!({
                    "method": "sendMessage", "chat_id": ctx.update().chat_id(), "text": "ok"
                }));
                Ok(())
            })
        });
    let (addr, stop, done) = spawn_webhook(Webhook::new(chain)).await;

    let callback = serde_json::json!({
        "update_id": 1,
        "callback_query": {
            "id": "4382bfdwdsb323b2d9", "chat_instance": "42", "data": "yes",
            "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
            "message": {
                "message_id": 9, "date": 1_700_000_000, "text": "Sure?",
                "from": {"id": 1, "is_bot": true, "first_name": "Bot"},
                "chat": {"id": 42, "type": "private", "first_name": "Ada"}
            }
        }
    });
    let (status, body) = post(addr, "/webhook", None, &callback.to_string()).await;
    assert_eq!(
        (status, body.contains("\"chat_id\":42")),
        (200, true),
        "{body}"
    );
    assert_eq!(stored::<u64>(&store, "42:42", "count"), Some(1));

    let channel_post = serde_json::json!({
        "update_id": 2,
        "channel_post": {
            "message_id": 3, "date": 1_700_000_000, "text": "news",
            "chat": {"id": -1002, "type": "channel", "title": "News"}
        }
    });
    let (status, _) = post(addr, "/webhook", None, &channel_post.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(store.len(), 1, "nothing stored for the channel post");

    stop.send(()).expect("serving");
    done.await.expect("no panic").expect("clean shutdown");
}

/// Two replicas behind a load balancer, each with its own live sessions, sharing one SQLite
/// database. Telegram posts a chat's next update only after the answer to the previous one,
/// and each answer comes after the save, so whichever replica gets the next update loads what
/// the other saved: the count never skips or repeats.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_store_see_each_others_saves_because_the_answer_waits_for_them() {
    use typed_session::SqliteStore;

    let path = std::env::temp_dir().join(format!(
        "typed-session-replicas-{}-{}.db",
        std::process::id(),
        common::unique("db").replace(':', "-")
    ));
    let url = format!("sqlite://{}", path.display());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = SqliteStore::connect(&url).await.expect("open the database");
        store.migrate().await.expect("migrate");
        let chain = Chain::new()
            .with(SessionMiddleware::<Counter, Update>::new(store))
            .handler(|ctx| {
                Box::pin(async move {
                    let count = ctx.session().await?.update_count(|c| {
                        *c += 1;
                        *c
                    });
                    ctx.reply_with(
                        serde_json::json!({"method": "sendMessage", "chat_id": 7, "text": count}),
                    );
                    Ok(())
                })
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(Webhook::new(chain).serve(listener, std::future::pending()));
        replicas.push(addr);
    }

    for id in 1..=20 {
        let replica = replicas[id as usize % 2];
        let (status, body) = post(replica, "/webhook", None, &telegram_update(id, 7, "+1")).await;
        assert_eq!(status, 200);
        let reply: serde_json::Value = serde_json::from_str(&body).expect("a JSON reply");
        assert_eq!(reply["text"], id, "update {id} on replica {}", id % 2);
    }
    common::remove_sqlite_file(&path);
}

/// Serves `chain` on `/tg` on a free port; returns the address and the stop sender.
async fn serve(chain: Chain<Update>) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let (addr, stop, _) = spawn_webhook(Webhook::new(chain).path("/tg")).await;
    (addr, stop)
}

/// A middleware that swallows a failed save cannot make the webhook acknowledge the update:
/// the context says a session is unsaved, so Telegram gets the error status and delivers the
/// update again.
#[tokio::test]
async fn an_unsaved_session_gets_the_error_status_even_if_a_middleware_swallowed_the_error() {
    let probe = common::ProbeStore::new(MemoryStore::new());
    probe.fail_next_applies(1);
    let chain = Chain::new()
        .with_fn(|ctx, next| {
            Box::pin(async move {
                let _ = next.run(ctx).await; // swallows every error
                Ok(())
            })
        })
        .with(SessionMiddleware::<Counter, Update>::new(Arc::clone(
            &probe,
        )))
        .handler(|ctx| {
            Box::pin(async move {
                ctx.session().await?.update_count(|c| *c += 1);
                Ok(())
            })
        });
    let (addr, _stop) = serve(chain).await;

    let (status, _) = post(addr, "/tg", None, &telegram_update(1, 5, "hi")).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR.as_u16());
    assert_eq!(probe.applies(), 1, "the save was tried, and failed");
}

/// Under the strict stale-write policy the update fails (error status), but its session was
/// saved: it must not be reported as unsaved.
#[tokio::test]
async fn a_strict_stale_write_is_saved_and_not_reported_as_unsaved() {
    let (logs, _capture) = common::logs::Logs::capture();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::builder(store.clone())
        .on_stale_write(typed_session::StalePolicy::Error)
        .build();
    let chain = common::stale_writer(&sessions, 2);
    let (addr, _stop) = serve(chain).await;

    let (status, _) = post(addr, "/tg", None, &telegram_update(1, 5, "hi")).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR.as_u16());
    assert_eq!(stored::<u64>(&store, "5:5", "count"), Some(1), "saved");
    assert_eq!(sessions.unsaved_sessions(), 0);
    assert!(logs.contain("update failed"), "{:?}", logs.lines());
    assert!(
        !logs.contain("not saved"),
        "not reported as unsaved: {:?}",
        logs.lines()
    );
}

/// A save that failed while serving, its writes kept (`SaveFailurePolicy::Keep`), is retried when
/// the server stops: `serve` returns only once it is written, or says it is not.
#[tokio::test]
async fn shutdown_saves_what_failed_to_save_or_says_it_could_not() {
    for store_recovers in [true, false] {
        let memory = MemoryStore::new();
        let probe = common::ProbeStore::new(memory.clone());
        probe.fail_next_applies(if store_recovers { 1 } else { usize::MAX });
        let chain = common::incrementing(
            &SessionMiddleware::builder(Arc::clone(&probe))
                .on_save_failure(typed_session::SaveFailurePolicy::Keep)
                .build(),
        );
        let (addr, stop, served) = spawn_webhook(Webhook::new(chain).path("/tg")).await;

        let (status, _) = post(addr, "/tg", None, &telegram_update(1, 5, "hi")).await;
        assert_eq!(status, 500, "the save failed: Telegram must redeliver");
        stop.send(()).expect("serving");
        let served = served.await.expect("no panic");

        if store_recovers {
            served.expect("the retry at shutdown saved it");
            assert_eq!(stored::<u64>(&memory, "5:5", "count"), Some(1));
        } else {
            let error = served.expect_err("still unsaved");
            assert!(error.to_string().contains("5:5"), "names the key: {error}");
            assert_eq!(stored::<u64>(&memory, "5:5", "count"), None);
        }
    }
}

/// By default a failed save takes the update's writes back and the webhook answers so that
/// Telegram delivers it again: the redelivery is counted once.
#[tokio::test]
async fn a_failed_save_is_answered_for_redelivery_and_the_redelivery_counts_once() {
    let memory = MemoryStore::new();
    let probe = common::ProbeStore::new(memory.clone());
    probe.fail_next_applies(1);
    let chain = common::incrementing(&SessionMiddleware::new(Arc::clone(&probe)));
    let (addr, _stop) = serve(chain).await;

    let (status, _) = post(addr, "/tg", None, &telegram_update(1, 5, "hi")).await;
    assert_eq!(status, 500, "Telegram delivers it again");
    assert_eq!(stored::<u64>(&memory, "5:5", "count"), None);
    let (status, _) = post(addr, "/tg", None, &telegram_update(1, 5, "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(stored::<u64>(&memory, "5:5", "count"), Some(1), "once");
}

/// When chain errors are answered `200` (to drop failed updates), an update whose session is
/// not saved still gets a status Telegram retries.
#[tokio::test]
async fn an_unsaved_session_gets_a_retried_status_even_when_errors_answer_200() {
    let memory = MemoryStore::new();
    let probe = common::ProbeStore::new(memory.clone());
    probe.fail_next_applies(1);
    let chain = common::incrementing(&SessionMiddleware::new(Arc::clone(&probe)));
    let webhook = Webhook::new(chain).path("/tg").error_status(StatusCode::OK);
    let (addr, _stop, _) = spawn_webhook(webhook).await;

    let (status, _) = post(addr, "/tg", None, &telegram_update(1, 5, "hi")).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE.as_u16());
}

/// An empty secret (an unset environment variable) would turn authentication off, and Telegram
/// refuses tokens outside `[A-Za-z0-9_-]{1,256}`: all are refused when the webhook is built,
/// without the token in the message.
#[test]
fn a_secret_token_telegram_would_refuse_is_refused_at_construction() {
    let webhook = || Webhook::new(Chain::<Update>::new().handler(|_| Box::pin(async { Ok(()) })));
    for bad in ["", "has space", "ünïcode", &"x".repeat(257)] {
        let error = webhook().secret_token(bad).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("1 to 256 characters"), "{message}");
        assert!(
            bad.is_empty() || !message.contains(bad),
            "the token leaks: {message}"
        );
    }
    assert!(webhook().secret_token("A-z_0-9").is_ok());
    assert!(webhook().secret_token("x".repeat(256)).is_ok());
}

/// Updates without a session key (a channel post has no sender; a poll has neither sender nor
/// chat) fail the documented `ctx.session().await?` pattern; they are answered `200` so that
/// Telegram does not deliver them again for a day, and a configured status otherwise.
#[tokio::test]
async fn an_update_without_a_session_key_is_answered_200_unless_configured_otherwise() {
    let keyless = [
        serde_json::json!({"update_id": 7001, "channel_post": {"message_id": 1, "date": 1_700_000_000,
            "chat": {"id": -100_123, "title": "news", "type": "channel"}, "text": "hello"}}),
        serde_json::json!({"update_id": 7002, "poll": {"id": "p1", "question": "?", "options": [],
            "total_voter_count": 0, "is_closed": false, "is_anonymous": true, "type": "regular",
            "allows_multiple_answers": false}}),
    ];
    for (status, expected) in [(None, 200), (Some(StatusCode::INTERNAL_SERVER_ERROR), 500)] {
        let store = MemoryStore::new();
        let chain = Chain::new()
            .with(SessionMiddleware::<Counter, Update>::new(store.clone()))
            .handler(|ctx| {
                Box::pin(async move {
                    ctx.session().await?.update_count(|c| *c += 1);
                    Ok(())
                })
            });
        let webhook = Webhook::new(chain).path("/tg");
        let webhook = match status {
            Some(status) => webhook.keyless_status(status),
            None => webhook,
        };
        let (addr, stop, done) = spawn_webhook(webhook).await;
        for update in &keyless {
            let (got, _) = post(addr, "/tg", None, &update.to_string()).await;
            assert_eq!(got, expected, "{update}");
        }
        let (ok, _) = post(addr, "/tg", None, &telegram_update(7003, 5, "hi")).await;
        assert_eq!(ok, 200, "keyed updates are served as before");
        let _ = stop.send(());
        done.await.expect("no panic").expect("served");
        assert_eq!(store.len(), 1, "only the keyed update wrote a session");
    }
}

/// A webhook whose handler counts messages, with short client deadlines.
fn strict(store: &MemoryStore, max_connections: usize) -> Webhook<Update> {
    Webhook::new(common::incrementing(
        &SessionMiddleware::<Counter, Update>::new(store.clone()),
    ))
    .path("/tg")
    .header_timeout(std::time::Duration::from_millis(300))
    .body_timeout(std::time::Duration::from_millis(300))
    .max_connections(max_connections)
}

/// Reads until the server closes the connection (within 10 s, far above the deadlines under
/// test); returns what it sent.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut seen),
    )
    .await
    .expect("the server closes the connection")
    .expect("read");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    let store = MemoryStore::new();
    let (addr, stop, done) = spawn_webhook(strict(&store, 16)).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"POST /tg HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a header");
    // Both are closed by the server (a read that never ends would hang the test).
    until_closed(&mut idle).await;
    until_closed(&mut half).await;
    let (status, _) = post(addr, "/tg", None, &telegram_update(8001, 5, "hi")).await;
    assert_eq!(status, 200, "the server still serves");
    let _ = stop.send(());
    done.await.expect("no panic").expect("served");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408_and_nothing_is_written() {
    let store = MemoryStore::new();
    let (addr, stop, done) = spawn_webhook(strict(&store, 16)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /tg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n{\"update_id\":",
        )
        .await
        .expect("the headers and a little");
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(store.len(), 0);
    let _ = stop.send(());
    done.await.expect("no panic").expect("served");
}

/// At the connection limit, a new connection takes the place of the oldest one that has no
/// request in progress: a good request is served at once, however many clients hold
/// connections without sending a request.
#[tokio::test]
async fn idle_connections_beyond_the_limit_make_room_for_a_good_request() {
    let store = MemoryStore::new();
    let (addr, stop, done) = spawn_webhook(strict(&store, 2)).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Both connection slots are taken by clients that send nothing; this request takes the
    // oldest one's place and is served.
    let (status, _) = post(addr, "/tg", None, &telegram_update(8101, 5, "hi")).await;
    assert_eq!(status, 200);
    for stream in &mut idle {
        until_closed(stream).await;
    }
    assert_eq!(stored::<u64>(&store, "5:5", "count"), Some(1));
    let _ = stop.send(());
    done.await.expect("no panic").expect("served");
}

/// A flood of slow connections (900 clients that send half a request's headers and then
/// nothing, on the default limits: 256 connections, a 10 s header timeout, a backlog of 1024):
/// a good request is answered within the header timeout. Before, the listener's backlog was
/// tokio's 128 and a full house of slow clients kept new ones out until their timeout, so a
/// good request waited 35.6 s, most of it in SYN retries. The latency is printed, not
/// asserted (the guide's webhook chapter quotes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_request_is_answered_within_the_header_timeout_during_a_flood_of_slow_connections() {
    const SLOW: usize = 900;
    let store = MemoryStore::new();
    let webhook = Webhook::new(common::incrementing(
        &SessionMiddleware::<Counter, Update>::new(store.clone()),
    ))
    .path("/tg");
    let listener = webhook
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a free loopback port");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(webhook.serve(listener, async {
        let _ = stopped.await;
    }));

    // The slow clients connect all at once; the good request goes once a third of them are
    // in, while the rest still arrive.
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let third_in = Arc::new(Notify::new());
    let (release, released) = tokio::sync::watch::channel(false);
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        let (connected, third_in, mut released) = (
            Arc::clone(&connected),
            Arc::clone(&third_in),
            released.clone(),
        );
        slow.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            // Half a request's headers, then nothing.
            let _ = stream.write_all(b"POST /tg HTTP/1.1\r\nHost: x\r\n").await;
            if connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == SLOW / 3 {
                third_in.notify_one();
            }
            let _ = released.wait_for(|done| *done).await;
        });
    }
    third_in.notified().await;
    let started = std::time::Instant::now();
    let (status, _) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        post(addr, "/tg", None, &telegram_update(8201, 5, "hi")),
    )
    .await
    .expect("answered within the header timeout");
    let took = started.elapsed();
    eprintln!(
        "webhook flood: a good request answered in {took:?} while {SLOW} slow clients connected"
    );
    assert_eq!(status, 200);
    assert_eq!(stored::<u64>(&store, "5:5", "count"), Some(1));
    let _ = release.send(true);
    while let Some(done) = slow.join_next().await {
        done.expect("a slow client ends");
    }
    let _ = stop.send(());
    done.await.expect("no panic").expect("served");
}
