//! [`Polling`]: a `getUpdates` loop that runs the chain for each update and confirms an update
//! to Telegram only once its sessions are saved (feature `polling`).
//!
//! Telegram keeps an update until a later `getUpdates` names an `offset` past it. The loop
//! fetches a batch, runs its updates concurrently (updates of one key share their live session,
//! so nothing is lost between them), waits for the whole batch, and only then asks for the
//! next one with the offset after it. If a session could not be saved, the loop retries the
//! save with backoff before it moves on; if it is stopped before the save succeeds, it
//! confirms only the updates before the first unsaved one, so Telegram delivers that one again
//! to the next run, which handles it against the store as it was. The updates after it in the
//! same batch come again too, although they were handled and saved: in that one case (a stop
//! while the store refuses writes) delivery is at least once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::chain::Chain;
use crate::context::Context;
use crate::error::SessionError;

/// Where the Bot API lives unless [`Polling::api_url`] says otherwise.
const TELEGRAM_API: &str = "https://api.telegram.org";

/// How long the HTTP client waits beyond the long-poll timeout before it gives up on a request.
const NETWORK_GRACE: Duration = Duration::from_secs(10);

/// Runs a [`Chain`] on the updates of Telegram's `getUpdates` long polling.
///
/// * Offsets: a batch is confirmed (by the next request's `offset`) only when every update in
///   it has finished and its sessions are saved.
/// * Concurrency: the updates of a batch run at once, at most
///   [`max_concurrency`](Self::max_concurrency) at a time, each on a task of its own, so a
///   panicking handler costs only its own update.
/// * Failures: a network error, a `5xx` or a `429` is retried with exponential backoff (or
///   after Telegram's `retry_after`); a rejected token (`401`, `404`) ends [`run`](Self::run)
///   with [`PollingError::Unauthorized`]. An update whose handler failed is logged and
///   confirmed, like teloxide's dispatcher does; an update whose session could not be saved is
///   not confirmed until the save succeeds.
/// * Replies: a Bot API method set with [`Context::reply_with`] is sent as its own request
///   after the update's sessions are saved, so a handler works unchanged under the webhook
///   and under polling.
/// * Shutdown: when the `shutdown` future given to [`run`](Self::run) completes, no new batch
///   is fetched, the running one finishes and persists, its offset is confirmed, and `run`
///   returns.
///
/// A batch is finished before the next one is fetched (Telegram's offset confirms everything
/// before it, so fetching on would confirm updates still running): one slow handler delays
/// the updates behind it. Move long work off the handler (spawn it, after saving what it
/// needs in the session), or lower [`limit`](Self::limit).
///
/// Telegram refuses `getUpdates` (`409`) while a webhook is set; call `deleteWebhook` first.
///
/// # Example
///
/// ```no_run
/// use typed_session::{Chain, MemoryStore, Polling, Session, SessionMiddleware, Update};
///
/// #[derive(Session)]
/// struct Visits {
///     count: u64,
/// }
///
/// # async fn run() -> Result<(), typed_session::PollingError> {
/// let chain = Chain::new()
///     .with(SessionMiddleware::<Visits, Update>::new(MemoryStore::new()))
///     .handler(|ctx| Box::pin(async move {
///         let visits = ctx.session().await?;
///         visits.update_count(|c| *c += 1);
///         if let Some(chat) = ctx.update().any_message().map(|m| m.chat.id) {
///             ctx.reply_with(serde_json::json!({
///                 "method": "sendMessage", "chat_id": chat, "text": format!("visit {}", visits.count()),
///             }));
///         }
///         Ok(())
///     }));
/// let token = std::env::var("BOT_TOKEN").unwrap_or_default();
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // e.g. sent on SIGTERM
/// Polling::new(token, chain)
///     .run(async { let _ = stopped.await; })
///     .await
/// # }
/// ```
pub struct Polling<U> {
    chain: Arc<Chain<U>>,
    token: String,
    api_url: String,
    timeout: Duration,
    limit: u8,
    max_concurrency: usize,
    allowed_updates: Option<Vec<String>>,
    backoff: (Duration, Duration),
}

/// Why [`Polling::run`] stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PollingError {
    /// The Bot API refused the token (`401 Unauthorized` or `404 Not Found`): retrying cannot
    /// help.
    #[error("the Bot API rejected the bot token ({code}): {description}")]
    Unauthorized {
        /// The Bot API's `error_code`.
        code: u16,
        /// The Bot API's `description`.
        description: String,
    },
    /// The HTTP client could not be built (no TLS backend could be set up).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl<U> Polling<U>
where
    U: DeserializeOwned + Send + Sync + 'static,
{
    /// Polls Telegram with bot `token` for `chain`, with a 30 s long-poll timeout, batches of
    /// up to 100 updates, at most 64 updates at once, and backoff from 500 ms to 30 s.
    pub fn new(token: impl Into<String>, chain: Chain<U>) -> Self {
        Polling {
            chain: Arc::new(chain),
            token: token.into(),
            api_url: TELEGRAM_API.to_owned(),
            timeout: Duration::from_secs(30),
            limit: 100,
            max_concurrency: 64,
            allowed_updates: None,
            backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        }
    }

    /// The Bot API server, for a local `telegram-bot-api` server or a test double (default
    /// `https://api.telegram.org`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// How long one `getUpdates` waits for updates when there are none (whole seconds; default
    /// 30 s; zero is short polling).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most updates fetched at once, clamped to Telegram's 1 to 100 (default 100).
    pub fn limit(mut self, limit: u8) -> Self {
        self.limit = limit.clamp(1, 100);
        self
    }

    /// The most updates handled at the same time (at least 1; default 64).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max.max(1);
        self
    }

    /// The update kinds to receive, as Bot API names (`"message"`, `"callback_query"`, ...);
    /// by default Telegram's own default.
    pub fn allowed_updates<I, T>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.allowed_updates = Some(kinds.into_iter().map(Into::into).collect());
        self
    }

    /// The first and the longest wait between retries; each failure doubles the wait.
    pub fn backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.backoff = (first, longest.max(first));
        self
    }

    /// Polls until `shutdown` completes, then finishes the batch in flight, confirms what was
    /// saved, and returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`PollingError::Unauthorized`] when Telegram rejects the token, and
    /// [`PollingError::Client`] when no HTTP client can be built.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), PollingError> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(PollingError::Client)?;
        let api = BotApi {
            client,
            base: format!("{}/bot{}", self.api_url, self.token),
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new(self.backoff);
        // The offset of the next request, and the one Telegram last received.
        let (mut offset, mut confirmed) = (0_i64, 0_i64);
        loop {
            let request = self.get_updates(offset, self.timeout, self.limit);
            let fetched = tokio::select! {
                biased;
                () = &mut shutdown => break,
                fetched = api.call("getUpdates", &request, self.timeout + NETWORK_GRACE) => fetched,
            };
            let updates: Vec<Box<RawValue>> = match fetched.and_then(parse_result) {
                Ok(updates) => updates,
                Err(CallError::Unauthorized { code, description }) => {
                    return Err(PollingError::Unauthorized { code, description });
                }
                Err(CallError::Retry { reason, after }) => {
                    let wait = after.unwrap_or_else(|| backoff.next());
                    tracing::warn!(%reason, ?wait, "getUpdates failed; retrying");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            backoff.reset();
            confirmed = offset;
            let batch = self.handle_batch(&api, updates).await;
            match self.settle(batch, &mut backoff, &mut shutdown).await {
                Settled::Saved(next) => offset = offset.max(next),
                Settled::Unsaved(first) => {
                    offset = offset.max(first);
                    break;
                }
            }
        }
        if offset > confirmed {
            self.confirm(&api, offset).await;
        }
        Ok(())
    }

    fn get_updates(&self, offset: i64, timeout: Duration, limit: u8) -> serde_json::Value {
        let mut request = serde_json::json!({
            "offset": offset,
            "limit": limit,
            "timeout": timeout.as_secs(),
        });
        if let Some(kinds) = &self.allowed_updates {
            request["allowed_updates"] = serde_json::json!(kinds);
        }
        request
    }

    /// Runs every update of a batch, at most `max_concurrency` at once, and waits for all.
    async fn handle_batch(&self, api: &BotApi, updates: Vec<Box<RawValue>>) -> Batch {
        let mut batch = Batch::default();
        let permits = Arc::new(Semaphore::new(self.max_concurrency));
        let mut running = JoinSet::new();
        let mut ids = HashMap::new();
        for raw in updates {
            let Some(id) = update_id(&raw) else {
                tracing::error!(
                    update = raw.get(),
                    "skipping an update without an update_id"
                );
                continue;
            };
            batch.next = batch.next.max(id + 1);
            let update: U = match serde_json::from_str(raw.get()) {
                Ok(update) => update,
                Err(error) => {
                    tracing::error!(update_id = id, %error, "skipping an update that does not parse");
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break; // never closed
            };
            let chain = Arc::clone(&self.chain);
            let api = api.clone();
            let task = running.spawn(async move {
                let outcome = handle_one(&chain, &api, update).await;
                drop(permit);
                outcome
            });
            ids.insert(task.id(), id);
        }
        while let Some(joined) = running.join_next_with_id().await {
            match joined {
                Ok((_, Outcome::Saved)) => {}
                Ok((task, Outcome::Unsaved)) => batch.unsaved(ids.get(&task).copied()),
                Err(error) => {
                    let id = ids.get(&error.id()).copied();
                    tracing::error!(
                        update_id = id,
                        "the handler panicked; its sessions are persisted on their own task"
                    );
                    batch.unsaved(id);
                }
            }
        }
        batch
    }

    /// After a batch with unsaved sessions, retries the saves until they succeed or shutdown
    /// is asked for.
    async fn settle(
        &self,
        batch: Batch,
        backoff: &mut Backoff,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Settled {
        let Some(first_unsaved) = batch.first_unsaved else {
            return Settled::Saved(batch.next);
        };
        loop {
            match self.chain.flush().await {
                Ok(()) => {
                    backoff.reset();
                    return Settled::Saved(batch.next);
                }
                Err(error) => {
                    let wait = backoff.next();
                    tracing::error!(%error, ?wait, "sessions of this batch are not saved; the batch stays unconfirmed while retrying");
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => return Settled::Unsaved(first_unsaved),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Tells Telegram that every update before `offset` is done.
    async fn confirm(&self, api: &BotApi, offset: i64) {
        let request = self.get_updates(offset, Duration::ZERO, 1);
        match api
            .call("getUpdates", &request, NETWORK_GRACE)
            .await
            .and_then(parse_result::<Vec<Box<RawValue>>>)
        {
            Ok(_) => tracing::info!(offset, "confirmed the updates handled before shutdown"),
            Err(error) => {
                tracing::warn!(offset, reason = %error, "could not confirm the last batch; Telegram delivers it again to the next run");
            }
        }
    }
}

/// Runs the chain for one update, then sends its reply.
async fn handle_one<U: Send + Sync + 'static>(
    chain: &Chain<U>,
    api: &BotApi,
    update: U,
) -> Outcome {
    let ctx = Context::new(update);
    match chain.run(&ctx).await {
        Ok(()) => {
            if let Some(reply) = ctx.take_reply() {
                api.send_reply(reply).await;
            }
            Outcome::Saved
        }
        Err(error) if is_unsaved(&*error) => {
            tracing::error!(%error, "update handled, but its session is not saved");
            Outcome::Unsaved
        }
        Err(error) => {
            tracing::error!(%error, "update failed");
            Outcome::Saved
        }
    }
}

/// Whether a chain error says a session could not be written.
fn is_unsaved(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<SessionError>(),
        Some(SessionError::Persist { .. })
    )
}

fn update_id(raw: &RawValue) -> Option<i64> {
    #[derive(Deserialize)]
    struct Id {
        update_id: i64,
    }
    serde_json::from_str::<Id>(raw.get())
        .ok()
        .map(|id| id.update_id)
}

enum Outcome {
    Saved,
    Unsaved,
}

/// What a batch left behind.
#[derive(Default)]
struct Batch {
    /// The offset that confirms the whole batch.
    next: i64,
    /// The first update whose sessions may not be saved.
    first_unsaved: Option<i64>,
}

impl Batch {
    fn unsaved(&mut self, id: Option<i64>) {
        // A panicked task whose id is unknown holds the whole batch back.
        let id = id.unwrap_or(0);
        self.first_unsaved = Some(self.first_unsaved.map_or(id, |first| first.min(id)));
    }
}

enum Settled {
    /// Everything is saved; the offset after the batch.
    Saved(i64),
    /// Shutdown came first; the offset of the first unsaved update.
    Unsaved(i64),
}

struct Backoff {
    first: Duration,
    longest: Duration,
    current: Duration,
}

impl Backoff {
    fn new((first, longest): (Duration, Duration)) -> Self {
        Backoff {
            first,
            longest,
            current: first,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.longest);
        wait
    }

    fn reset(&mut self) {
        self.current = self.first;
    }
}

/// The Bot API over HTTP. The token is part of `base`, so request errors are logged without
/// their URL.
#[derive(Clone)]
struct BotApi {
    client: reqwest::Client,
    base: String,
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("token rejected ({code}): {description}")]
    Unauthorized { code: u16, description: String },
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// The Bot API's answer envelope.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    result: Option<Box<RawValue>>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<AnswerParameters>,
}

#[derive(Deserialize)]
struct AnswerParameters {
    retry_after: Option<u64>,
}

impl BotApi {
    async fn call(
        &self,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let retry = |reason: String| CallError::Retry {
            reason,
            after: None,
        };
        let response = self
            .client
            .post(format!("{}/{method}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(params.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| retry(error.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| retry(error.without_url().to_string()))?;
        serde_json::from_slice(&body).map_err(|error| {
            retry(format!(
                "{method} answered {status} with no Bot API answer: {error}"
            ))
        })
    }

    /// Sends a method set with [`Context::reply_with`]; a failure is logged, not retried.
    async fn send_reply(&self, mut reply: serde_json::Value) {
        let method = match reply.as_object_mut().and_then(|o| o.remove("method")) {
            Some(serde_json::Value::String(method)) => method,
            _ => {
                tracing::error!(%reply, "a reply must be a JSON object with a \"method\" string");
                return;
            }
        };
        let sent = self
            .call(&method, &reply, NETWORK_GRACE)
            .await
            .and_then(parse_result::<Box<RawValue>>);
        if let Err(error) = sent {
            tracing::warn!(method, reason = %error, "the reply was not sent");
        }
    }
}

fn parse_result<T: DeserializeOwned>(answer: Answer) -> Result<T, CallError> {
    if answer.ok {
        let result = answer.result.as_deref().map_or("null", RawValue::get);
        return serde_json::from_str(result).map_err(|error| CallError::Retry {
            reason: format!("unexpected result: {error}"),
            after: None,
        });
    }
    let code = answer.error_code.unwrap_or_default();
    let description = answer.description.unwrap_or_default();
    if matches!(code, 401 | 404) {
        return Err(CallError::Unauthorized { code, description });
    }
    Err(CallError::Retry {
        after: answer
            .parameters
            .and_then(|p| p.retry_after)
            .map(Duration::from_secs),
        reason: format!("{code}: {description}"),
    })
}
