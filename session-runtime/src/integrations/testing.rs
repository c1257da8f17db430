//! Run a bot offline: [`BotApiDouble`], a test double of the Telegram Bot API served over real
//! HTTP on a loopback port (feature `testing`).
//!
//! Point a bot's API URL at [`BotApiDouble::url`] and it polls, answers and sends as it would
//! against Telegram, with no network and no token of yours. The double answers `getUpdates`
//! as Telegram does (an update stays until a later call's `offset` confirms it; a long poll
//! waits for new updates), records every `sendMessage`, and answers the calls a teloxide
//! `Dispatcher` makes when it starts (`getMe`, `getWebhookInfo`, `deleteWebhook`). Any other
//! method gets Telegram's `404` answer. Updates are pushed as Bot API JSON:
//! [`telegram::Update`](crate::telegram::Update)'s builders, teloxide-core's `Update`, or a
//! `serde_json::Value`.
//!
//! A teloxide bot whose handlers get a session, run inside a real `Dispatcher` against the
//! double:
//!
//! ```
//! use std::time::Duration;
//!
//! use teloxide::prelude::*;
//! use typed_session::testing::BotApiDouble;
//! use typed_session::{MemoryStore, Session, SessionMiddleware, telegram};
//!
//! #[derive(Session)]
//! struct Visits {
//!     count: u64,
//! }
//!
//! async fn greet(bot: Bot, message: Message, visits: VisitsHandle<'static>) -> ResponseResult<()> {
//!     let count = visits.update_count(|c| { *c += 1; *c });
//!     bot.send_message(message.chat.id, format!("visit {count}")).await?;
//!     Ok(())
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let telegram = BotApiDouble::start().await?;
//! telegram.push([telegram::Update::text(1, 42, 42, "hi"), telegram::Update::text(2, 42, 42, "hi")])?;
//!
//! let sessions = SessionMiddleware::<Visits, Update>::new(MemoryStore::new());
//! let handler = dptree::entry()
//!     .chain(sessions.attach())
//!     .branch(Update::filter_message().chain(sessions.load()).endpoint(greet));
//! let bot = Bot::new(BotApiDouble::TOKEN).set_api_url(telegram.url().parse()?);
//! let mut dispatcher = Dispatcher::builder(bot, handler).build();
//! let stop = dispatcher.shutdown_token();
//! let running = tokio::spawn(async move { dispatcher.dispatch().await });
//!
//! telegram.wait_until(Duration::from_secs(10), |seen| seen.sent.len() == 2).await?;
//! stop.shutdown()?.await;
//! running.await?;
//! let replies: Vec<String> = telegram.seen(|seen| seen.sent.iter().map(|m| m.text.clone()).collect());
//! assert_eq!(replies, ["visit 1", "visit 2"]);
//! # Ok::<(), typed_session::BoxError>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::clock::Later;

/// A test double of the Telegram Bot API on a free loopback port, for running a bot offline
/// (see the [module docs](self)).
///
/// Cloning it is cheap; every clone is the same double. Its server stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct BotApiDouble {
    double: Arc<Double>,
    url: Arc<str>,
    _server: Arc<Server>,
}

/// What the routes and the handles share.
#[derive(Default)]
struct Double {
    state: Mutex<Knobs>,
    changed: Notify,
}

/// What was seen, and how the next calls are to be answered.
#[derive(Default)]
struct Knobs {
    seen: Seen,
    failing: usize,
    flooding: usize,
    reject_token: bool,
    on_get_updates: Option<Arc<dyn Fn(i64) + Send + Sync>>,
}

/// The serving task, stopped with the last handle.
struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for BotApiDouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotApiDouble")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What the double has seen and still holds, as [`BotApiDouble::seen`] and
/// [`BotApiDouble::wait_until`] show it.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Seen {
    /// Updates pushed and not yet confirmed by an `offset`, oldest first.
    pub pending: Vec<Value>,
    /// The `offset` of every `getUpdates`, in order.
    pub offsets: Vec<i64>,
    /// Every `sendMessage`, in order.
    pub sent: Vec<SentMessage>,
}

/// A `sendMessage` the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentMessage {
    /// The `chat_id` it was sent to (`0` when it was not a number).
    pub chat_id: i64,
    /// Its `text`.
    pub text: String,
}

/// [`BotApiDouble::wait_until`] ran out of time: what it waited for never held.
#[derive(Debug, thiserror::Error)]
#[error("the Bot API test double did not see what was awaited within {0:?}")]
pub struct TimedOut(pub Duration);

impl BotApiDouble {
    /// The bot token the double accepts. A call with any other token gets `401 Unauthorized`,
    /// as Telegram answers a revoked token.
    pub const TOKEN: &'static str = "123456:TEST-double";

    /// Starts the double on a free port of 127.0.0.1, on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let double = Arc::new(Double::default());
        let app = Router::new()
            .route("/{bot}/{method}", post(answer))
            .with_state(Arc::clone(&double));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the Bot API test double stopped serving");
            }
        });
        Ok(BotApiDouble {
            double,
            url: url.into(),
            _server: Arc::new(Server(server)),
        })
    }

    /// The API's base URL, `http://127.0.0.1:{port}`, for teloxide's `Bot::set_api_url` or
    /// the poller's `Polling::api_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues updates for `getUpdates`, in order: anything that serializes to Bot API
    /// `Update` JSON.
    ///
    /// # Errors
    ///
    /// When an update does not serialize to JSON; nothing is queued then.
    pub fn push<T: serde::Serialize>(
        &self,
        updates: impl IntoIterator<Item = T>,
    ) -> Result<(), serde_json::Error> {
        let updates = updates
            .into_iter()
            .map(|update| serde_json::to_value(update))
            .collect::<Result<Vec<_>, _>>()?;
        self.double.state.lock().seen.pending.extend(updates);
        self.double.changed.notify_waiters();
        Ok(())
    }

    /// Reads what the double has seen so far.
    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.double.state.lock().seen)
    }

    /// Waits until `done` holds of what the double has seen (checked now and after each call
    /// it answers), for at most `within`.
    ///
    /// # Errors
    ///
    /// [`TimedOut`] when `done` still does not hold after `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&Seen) -> bool,
    ) -> Result<(), TimedOut> {
        let wait = async {
            loop {
                let changed = self.double.changed.notified();
                if done(&self.double.state.lock().seen) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| TimedOut(within))
    }

    /// Answers the next `n` calls of `getUpdates` with a `502 Bad Gateway` and an HTML body,
    /// as Telegram's front end does when it is overloaded.
    pub fn fail_get_updates(&self, n: usize) {
        self.double.state.lock().failing = n;
    }

    /// Answers the next `n` calls of `getUpdates` with a `429 Too Many Requests` flood wait
    /// (`retry_after` 0).
    pub fn flood_get_updates(&self, n: usize) {
        self.double.state.lock().flooding = n;
    }

    /// Answers every call with `401 Unauthorized` (a revoked token) while `on`.
    pub fn reject_token(&self, on: bool) {
        self.double.state.lock().reject_token = on;
    }

    /// Calls `observe` with the `offset` of each `getUpdates` as it arrives, before it is
    /// answered: a window on the bot at that moment (which updates it has confirmed).
    pub fn on_get_updates(&self, observe: impl Fn(i64) + Send + Sync + 'static) {
        self.double.state.lock().on_get_updates = Some(Arc::new(observe));
    }
}

async fn answer(
    State(double): State<Arc<Double>>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let params: Value = serde_json::from_slice(&body).unwrap_or_default();
    let rejected = double.state.lock().reject_token;
    if rejected || bot.strip_prefix("bot") != Some(BotApiDouble::TOKEN) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
        );
    }
    // Bot API method names are case-insensitive (teloxide sends `GetMe`).
    let response = match method.to_ascii_lowercase().as_str() {
        "getupdates" => get_updates(&double, &params).await,
        "sendmessage" => send_message(&double, &params),
        "getme" => {
            let mut me = bot_user();
            for flag in [
                "can_join_groups",
                "can_read_all_group_messages",
                "supports_inline_queries",
                "can_connect_to_business",
                "has_main_web_app",
            ] {
                me[flag] = json!(false);
            }
            ok(me)
        }
        "getwebhookinfo" => {
            ok(json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0}))
        }
        "deletewebhook" => ok(json!(true)),
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
        ),
    };
    double.changed.notify_waiters();
    response
}

fn send_message(double: &Double, params: &Value) -> Response {
    let chat_id = params["chat_id"].as_i64().unwrap_or_default();
    let text = params["text"].as_str().unwrap_or_default().to_owned();
    let message_id = {
        let mut state = double.state.lock();
        state.seen.sent.push(SentMessage {
            chat_id,
            text: text.clone(),
        });
        state.seen.sent.len()
    };
    ok(json!({
        "message_id": message_id, "date": 1_700_000_000, "text": text, "from": bot_user(),
        "chat": {"id": chat_id, "type": "private", "first_name": "Ada"},
    }))
}

async fn get_updates(double: &Double, params: &Value) -> Response {
    let offset = params["offset"].as_i64().unwrap_or_default();
    let limit = params["limit"]
        .as_u64()
        .map_or(100, |limit| usize::try_from(limit).unwrap_or(100));
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or_default());
    let deadline = tokio::time::Instant::now().later(timeout);
    let observe = double.state.lock().on_get_updates.clone();
    if let Some(observe) = observe {
        observe(offset);
    }
    {
        let mut state = double.state.lock();
        state.seen.offsets.push(offset);
        if state.failing > 0 {
            state.failing -= 1;
            return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
        }
        if state.flooding > 0 {
            state.flooding -= 1;
            let flood = json!({
                "ok": false, "error_code": 429, "description": "Too Many Requests: retry after 0",
                "parameters": {"retry_after": 0},
            });
            return reply(StatusCode::TOO_MANY_REQUESTS, flood);
        }
        state
            .seen
            .pending
            .retain(|update| update["update_id"].as_i64().unwrap_or_default() >= offset);
    }
    double.changed.notify_waiters();
    loop {
        let changed = double.changed.notified();
        {
            let state = double.state.lock();
            if !state.seen.pending.is_empty() || timeout.is_zero() {
                let batch: Vec<Value> = state.seen.pending.iter().take(limit).cloned().collect();
                return ok(Value::Array(batch));
            }
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return ok(json!([]));
        }
    }
}

fn bot_user() -> Value {
    json!({"id": 123456, "is_bot": true, "first_name": "Test double", "username": "double_bot"})
}

fn ok(result: Value) -> Response {
    reply(StatusCode::OK, json!({"ok": true, "result": result}))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
