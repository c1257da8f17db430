//! A test double of the Telegram Bot API, served over real HTTP on a free loopback port: the
//! Telegram servers cannot be part of a test run, so this stands in for them. It answers
//! `getUpdates` as Telegram does (an update stays until an `offset` confirms it; long polls
//! wait for new updates), records `sendMessage`, and answers the calls teloxide's dispatcher
//! makes on start (`getMe`, `getWebhookInfo`, `deleteWebhook`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use typed_session::axum::Router;
use typed_session::axum::body::Bytes;
use typed_session::axum::extract::{Path, State};
use typed_session::axum::http::StatusCode;
use typed_session::axum::http::header;
use typed_session::axum::response::{IntoResponse, Response};
use typed_session::axum::routing::post;

pub const TOKEN: &str = "123456:TEST-double";

/// Test double of the Telegram Bot API (`getUpdates` and `sendMessage`), served on a free
/// loopback port. It keeps updates until an `offset` confirms them, as Telegram does.
#[derive(Default)]
pub struct FakeBotApi {
    pub state: Mutex<FakeState>,
    changed: Notify,
}

#[derive(Default)]
pub struct FakeState {
    /// Updates not yet confirmed, oldest first.
    pub pending: Vec<Value>,
    /// The `offset` of every `getUpdates`, in order.
    pub offsets: Vec<i64>,
    /// Every `sendMessage`, as `(chat_id, text)`.
    pub sent: Vec<(i64, String)>,
    /// How many `getUpdates` still get a `502` with an HTML body.
    pub fail_next: usize,
    /// How many `getUpdates` still get a `429` flood-wait answer, with `retry_after` 0.
    pub flood_next: usize,
    /// Whether every call gets `401 Unauthorized`.
    pub reject_token: bool,
    /// Called with the offset of each `getUpdates` as it arrives, to look at the world then.
    pub on_get_updates: Option<Arc<dyn Fn(i64) + Send + Sync>>,
}

impl FakeBotApi {
    pub async fn start() -> (Arc<Self>, String) {
        let fake = Arc::new(FakeBotApi::default());
        let app = Router::new()
            .route("/{bot}/{method}", post(answer))
            .with_state(Arc::clone(&fake));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        tokio::spawn(async move { typed_session::axum::serve(listener, app).await });
        (fake, format!("http://{addr}"))
    }

    /// Queues updates (any type that serializes to Bot API JSON).
    pub fn push<T: serde::Serialize>(&self, updates: impl IntoIterator<Item = T>) {
        let mut state = self.state.lock();
        for update in updates {
            state
                .pending
                .push(serde_json::to_value(update).expect("an update is JSON"));
        }
        drop(state);
        self.changed.notify_waiters();
    }

    pub fn state<T>(&self, read: impl FnOnce(&FakeState) -> T) -> T {
        read(&self.state.lock())
    }

    /// Waits until `done` holds (each change of the double wakes it).
    pub async fn wait_until(&self, done: impl Fn(&FakeState) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if done(&self.state.lock()) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the poller did not get there within 30 s");
    }
}

async fn answer(
    State(fake): State<Arc<FakeBotApi>>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let params: Value = serde_json::from_slice(&body).unwrap_or_default();
    let unauthorized = || {
        reply(
            StatusCode::UNAUTHORIZED,
            json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
        )
    };
    if bot != format!("bot{TOKEN}") || fake.state.lock().reject_token {
        return unauthorized();
    }
    // Bot API method names are case-insensitive (teloxide sends `GetMe`).
    let response = match method.to_ascii_lowercase().as_str() {
        "getupdates" => get_updates(&fake, &params).await,
        "sendmessage" => {
            let chat = params["chat_id"].as_i64().unwrap_or_default();
            let text = params["text"].as_str().unwrap_or_default().to_owned();
            let message_id = {
                let mut state = fake.state.lock();
                state.sent.push((chat, text.clone()));
                state.sent.len()
            };
            let message = json!({
                "message_id": message_id, "date": 1_700_000_000, "text": text, "from": bot_user(),
                "chat": {"id": chat, "type": "private", "first_name": "Ada"},
            });
            reply(StatusCode::OK, json!({"ok": true, "result": message}))
        }
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
            reply(StatusCode::OK, json!({"ok": true, "result": me}))
        }
        "getwebhookinfo" => reply(
            StatusCode::OK,
            json!({"ok": true, "result": {"url": "", "has_custom_certificate": false, "pending_update_count": 0}}),
        ),
        "deletewebhook" => reply(StatusCode::OK, json!({"ok": true, "result": true})),
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
        ),
    };
    fake.changed.notify_waiters();
    response
}

fn bot_user() -> Value {
    json!({"id": 123456, "is_bot": true, "first_name": "Test double", "username": "double_bot"})
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn get_updates(fake: &FakeBotApi, params: &Value) -> Response {
    let offset = params["offset"].as_i64().unwrap_or_default();
    let limit = params["limit"].as_u64().unwrap_or(100) as usize;
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or_default());
    let deadline = tokio::time::Instant::now() + timeout;
    let observe = fake.state.lock().on_get_updates.clone();
    if let Some(observe) = observe {
        observe(offset);
    }
    {
        let mut state = fake.state.lock();
        state.offsets.push(offset);
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
        }
        if state.flood_next > 0 {
            state.flood_next -= 1;
            let flood = json!({
                "ok": false, "error_code": 429, "description": "Too Many Requests: retry after 0",
                "parameters": {"retry_after": 0},
            });
            return reply(StatusCode::TOO_MANY_REQUESTS, flood);
        }
        state
            .pending
            .retain(|u| u["update_id"].as_i64().unwrap_or_default() >= offset);
    }
    fake.changed.notify_waiters();
    loop {
        let changed = fake.changed.notified();
        {
            let state = fake.state.lock();
            if !state.pending.is_empty() || timeout.is_zero() {
                let batch: Vec<Value> = state.pending.iter().take(limit).cloned().collect();
                return reply(StatusCode::OK, json!({"ok": true, "result": batch}));
            }
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return reply(StatusCode::OK, json!({"ok": true, "result": []}));
        }
    }
}
