//! [`Polling`]: a `getUpdates` loop that runs the chain for each update and confirms an update
//! to Telegram only once its sessions are saved (feature `polling`).
//!
//! Telegram keeps an update until a later `getUpdates` names an `offset` past it, and an
//! offset confirms every update before it. So the loop sends, as its offset, the oldest update
//! whose sessions are not saved yet: updates run concurrently and new ones keep coming while
//! a slow one runs, but none is confirmed before every older one is saved. (While updates
//! run, the loop asks with a zero timeout, and again when one finishes or after half a
//! second; Telegram re-sends the held-back updates, which are skipped.)
//!
//! If a session could not be saved, the loop lets the running updates finish, then retries
//! the save with backoff before it takes new ones. If it is stopped before the save succeeds,
//! it confirms only the updates before the first unsaved one, so Telegram delivers that one
//! again to the next run, which handles it against the store as it was. The updates after it
//! come again too, although they were handled and saved: in that one case (a stop while the
//! store refuses writes) delivery is at least once.

mod bot_api;
mod schedule;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::time::Instant;

use self::bot_api::{BotApi, CallError, NETWORK_GRACE, parse_result};
use self::schedule::{Backoff, Running, Status, Window};
use crate::chain::Chain;
use crate::clock::Later;
use crate::context::Context;
use crate::error::BoxError;
use crate::key::UpdateKeys;

/// Where the Bot API lives unless [`Polling::api_url`] says otherwise.
const TELEGRAM_API: &str = "https://api.telegram.org";

/// How soon to ask again when a request brought nothing new while updates run (a long poll
/// then would keep the offset from moving when they finish).
const REPOLL: Duration = Duration::from_millis(500);

/// Runs a [`Chain`] on the updates of Telegram's `getUpdates` long polling.
///
/// * Offsets: an update is confirmed (by a later request's `offset`) only when it and every
///   update before it have finished and their sessions are saved.
/// * Concurrency: updates of different chats run at once, at most
///   [`max_concurrency`](Self::max_concurrency) taken at a time, each on a task of its own,
///   so a panicking handler costs only its own update and a slow one holds back only the
///   offset and its own chat, not the other chats. One chat's updates run one at a time, in
///   the order Telegram sent them (as teloxide's dispatcher does; updates without a chat are
///   ordered by sender, and those with neither run freely).
/// * Failures: a network error, a `5xx` or a `429` is retried with exponential backoff (or
///   after Telegram's `retry_after`); a rejected token (`401`, `404`) ends [`run`](Self::run)
///   with [`PollingError::Unauthorized`]. An update whose handler failed is logged and
///   confirmed, like teloxide's dispatcher does; an update whose session could not be saved is
///   not confirmed until the save succeeds.
/// * Replies: a Bot API method set with [`Context::reply_with`] is sent as its own request
///   after the update's sessions are saved, so a handler works unchanged under the webhook
///   and under polling.
/// * Shutdown: when the `shutdown` future given to [`run`](Self::run) completes, no new update
///   is fetched, the running ones finish and save, what is saved is confirmed, and `run`
///   returns.
///
/// A slow update keeps the updates after it unconfirmed while it runs; if
/// [`limit`](Self::limit) of them pile up behind it, Telegram's answer holds only those and
/// new ones wait until it finishes.
///
/// Telegram refuses `getUpdates` (`409`) while a webhook is set; call `deleteWebhook` first.
///
/// # Example
///
/// ```no_run
/// use typed_session::telegram::Update;
/// use typed_session::{Chain, MemoryStore, Polling, Session, SessionMiddleware};
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
/// let stopped = Polling::new(token, chain)
///     .run(async { let _ = stopped.await; })
///     .await?;
/// assert!(stopped.unsaved.is_empty(), "Telegram delivers these again: {:?}", stopped.unsaved);
/// # Ok(())
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

impl<U> std::fmt::Debug for Polling<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polling")
            .field("token", &"<redacted>")
            .field("api_url", &self.api_url)
            .field("timeout", &self.timeout)
            .field("limit", &self.limit)
            .field("max_concurrency", &self.max_concurrency)
            .field("allowed_updates", &self.allowed_updates)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// How [`Polling::run`] left things when it was asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// The updates whose sessions could not be saved before the stop, oldest first. They
    /// were not confirmed: Telegram delivers them (and the ones after them) again to the next
    /// run. Empty when everything handled is saved.
    pub unsaved: Vec<i64>,
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
    Client(#[source] BoxError),
}

impl<U> Polling<U>
where
    U: DeserializeOwned + UpdateKeys + Send + Sync + 'static,
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

    /// The most updates taken at the same time, running or waiting for an earlier update of
    /// their chat (at least 1; default 64).
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

    /// Polls until `shutdown` completes, then finishes the updates in flight, confirms what was
    /// saved, and returns what could not be saved.
    ///
    /// # Errors
    ///
    /// [`PollingError::Unauthorized`] when Telegram rejects the token, and
    /// [`PollingError::Client`] when no HTTP client can be built.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Stopped, PollingError> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|error| PollingError::Client(error.into()))?;
        let api = BotApi {
            client,
            base: format!("{}/bot{}", self.api_url, self.token),
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new(self.backoff);
        let mut window = Window::default();
        let mut running = Running::default();
        let mut fetch: Option<(i64, Fetch)> = None;
        // No request before this instant; `true`: a finished update ends the wait early.
        let mut pause: Option<(Instant, bool)> = None;
        // The offset Telegram last answered (offsets only grow).
        let mut confirmed = 0_i64;
        let stopped_by = loop {
            if window.has_unsaved() {
                // Saves failed: finish what runs, then retry the saves before anything new.
                fetch = None;
                running.drain(&mut window).await;
                if !self
                    .save_unsaved(&api, &mut window, &mut backoff, &mut shutdown)
                    .await
                {
                    break None;
                }
            }
            let offset = window.watermark();
            if fetch.is_none() && pause.is_none() && running.len() < self.max_concurrency {
                // Long polling only when nothing runs: a finished update may move the offset.
                let timeout = if running.is_empty() {
                    self.timeout
                } else {
                    Duration::ZERO
                };
                let request = self.get_updates(offset, timeout, self.limit);
                let api = api.clone();
                fetch = Some((
                    offset,
                    Box::pin(async move {
                        let answer = api
                            .call("getUpdates", &request, timeout + NETWORK_GRACE)
                            .await;
                        answer.and_then(parse_result)
                    }),
                ));
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break None,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    window.finish(joined);
                    // Ask again early only if the answer can differ: the offset moved.
                    if matches!(pause, Some((_, true))) && window.watermark() > confirmed {
                        pause = None;
                    }
                }
                () = sleep_until(pause.map(|(until, _)| until)), if pause.is_some() => pause = None,
                fetched = poll_fetch(&mut fetch), if fetch.is_some() => {
                    let sent_offset = fetch.take().map_or(offset, |(sent, _)| sent);
                    match fetched {
                        Ok(updates) => {
                            backoff.reset();
                            confirmed = confirmed.max(sent_offset);
                            let room = self.max_concurrency.saturating_sub(running.len());
                            let started = self.start(updates, room, &api, &mut window, &mut running);
                            if started == 0 && !running.is_empty() {
                                // Nothing new while updates run: ask again when one finishes
                                // and moves the offset, or after a while.
                                pause = Some((Instant::now().later(REPOLL), true));
                            }
                        }
                        Err(CallError::Unauthorized { code, description }) => {
                            break Some(PollingError::Unauthorized { code, description });
                        }
                        Err(CallError::Retry { reason, after }) => {
                            let wait = after.unwrap_or_else(|| backoff.next());
                            tracing::warn!(%reason, ?wait, "getUpdates failed; retrying");
                            pause = Some((Instant::now().later(wait), false));
                        }
                    }
                }
            }
        };
        // Stop: let the running updates finish and persist, give failed saves one more try,
        // and confirm what is saved.
        drop(fetch);
        running.drain(&mut window).await;
        if window.has_unsaved() {
            match self.chain.flush().await {
                Ok(()) => window.saved(),
                Err(error) => {
                    tracing::error!(%error, "sessions still unsaved at shutdown; their updates stay with Telegram")
                }
            }
        }
        let offset = window.watermark();
        if offset > confirmed {
            self.confirm(&api, offset).await;
        }
        let unsaved = window.unsaved_ids();
        if !unsaved.is_empty() {
            tracing::error!(
                ?unsaved,
                "stopped with updates whose sessions are not saved; Telegram delivers them again to the next run"
            );
        }
        match stopped_by {
            Some(error) => Err(error),
            None => Ok(Stopped { unsaved }),
        }
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

    /// Starts the fetched updates not started before, at most `room` of them (the rest come
    /// again with the next request); returns how many it started.
    fn start(
        &self,
        updates: Vec<Box<RawValue>>,
        room: usize,
        api: &BotApi,
        window: &mut Window,
        running: &mut Running,
    ) -> usize {
        let mut started = 0;
        for raw in updates {
            let Some(id) = update_id(&raw) else {
                tracing::error!(
                    update = raw.get(),
                    "skipping an update without an update_id"
                );
                continue;
            };
            if id < window.fresh_from {
                continue; // started before; still held back by an older one
            }
            if started == room {
                break;
            }
            window.fresh_from = id + 1;
            let update: U = match serde_json::from_str(raw.get()) {
                Ok(update) => update,
                Err(error) => {
                    tracing::error!(update_id = id, %error, "skipping an update that does not parse");
                    continue;
                }
            };
            window.open.insert(id, Status::Running);
            window.raw.insert(id, raw.clone());
            let chat = update.chat_id().or_else(|| update.user_id());
            let (chain, api) = (Arc::clone(&self.chain), api.clone());
            running.submit(
                id,
                chat,
                Box::pin(async move { handle_one(&chain, &api, &raw, update).await }),
            );
            started += 1;
        }
        started
    }

    /// Retries the failed saves until they succeed (`true`) or shutdown is asked for
    /// (`false`). Nothing runs meanwhile.
    async fn save_unsaved(
        &self,
        api: &BotApi,
        window: &mut Window,
        backoff: &mut Backoff,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        loop {
            // Oldest first: one chat's updates keep their order.
            let mut retried = Ok(());
            for (id, raw) in window.to_retry() {
                let Ok(update) = serde_json::from_str::<U>(raw.get()) else {
                    window.finish((Some(id), Status::Saved)); // parsed once before: never here
                    continue;
                };
                let status = handle_one(&self.chain, api, &raw, update).await;
                window.finish((Some(id), status));
                if status != Status::Saved {
                    retried = Err(format!("update {id} did not save"));
                    break;
                }
            }
            let flushed = match retried {
                Ok(()) => self.chain.flush().await,
                Err(error) => Err(error.into()),
            };
            match flushed {
                Ok(()) => {
                    backoff.reset();
                    window.saved();
                    return true;
                }
                Err(error) => {
                    let wait = backoff.next();
                    tracing::error!(%error, ?wait, "sessions are not saved; their updates stay unconfirmed while retrying");
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => return false,
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
                tracing::warn!(offset, reason = %error, "could not confirm the last updates; Telegram delivers them again to the next run");
            }
        }
    }
}

/// A `getUpdates` in flight.
type Fetch = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Box<RawValue>>, CallError>> + Send>>;

/// Waits for the request in flight; never completes when there is none.
async fn poll_fetch(fetch: &mut Option<(i64, Fetch)>) -> Result<Vec<Box<RawValue>>, CallError> {
    match fetch {
        Some((_, request)) => request.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// How many times an update runs when another writer keeps changing its session under it.
const MAX_RUNS: u32 = 10;

/// Runs the chain for one update, then sends its reply. An update whose writes were refused
/// because another writer had changed those fields runs again (parsed afresh from `raw`) on
/// the newer values, up to [`MAX_RUNS`] times.
async fn handle_one<U>(chain: &Chain<U>, api: &BotApi, raw: &RawValue, update: U) -> Status
where
    U: DeserializeOwned + Send + Sync + 'static,
{
    let mut update = update;
    for run in 1..=MAX_RUNS {
        let ctx = Context::new(update);
        let outcome = chain.run(&ctx).await;
        if ctx.must_retry() && run < MAX_RUNS {
            tracing::warn!(run, "the update's writes were not saved; running it again");
            tokio::time::sleep(Duration::from_millis(u64::from(run) * 5)).await;
            match serde_json::from_str(raw.get()) {
                Ok(again) => {
                    update = again;
                    continue;
                }
                Err(_) => return Status::Retry,
            }
        }
        if ctx.must_retry() {
            tracing::error!(
                error = outcome.err().map(|e| e.to_string()),
                "the update's writes were not saved; it stays unconfirmed and runs again"
            );
            return Status::Retry;
        }
        if ctx.has_unsaved_session() {
            // Even if a middleware swallowed the error: the update stays unconfirmed.
            tracing::error!(
                error = outcome.err().map(|e| e.to_string()),
                "update handled, but its session is not saved"
            );
            return Status::Unsaved;
        }
        match outcome {
            Ok(()) => {
                if let Some(reply) = ctx.take_reply() {
                    api.send_reply(reply).await;
                }
            }
            Err(error) => tracing::error!(%error, "update failed"),
        }
        return Status::Saved;
    }
    Status::Retry
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
