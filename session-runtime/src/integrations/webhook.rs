//! [`Webhook`]: an HTTP server for Telegram's webhook that runs the chain and answers only
//! after every session of the update is saved (feature `webhook`).
//!
//! Telegraf's docs ask webhook users to turn `webhookReply` off, because the HTTP answer can
//! end the update before its session is written. Here the answer is sent when
//! [`Chain::run`] has returned, and that happens only once every session middleware has
//! saved: a webhook reply cannot race the save.
//!
//! Telegram sends the next update of a chat only after the answer to the previous one, so
//! several replicas of a bot behind a load balancer never work on one chat's session at the
//! same time; with field-level patches, different chats' writes never collide either.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;

use crate::chain::Chain;
use crate::context::Context;

/// The header Telegram sends the webhook's `secret_token` in.
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// A webhook secret token Telegram would refuse (see [`Webhook::secret_token`]). The token
/// itself is not part of the message.
#[derive(Debug, thiserror::Error)]
#[error(
    "the webhook secret token ({len} bytes) must be 1 to 256 characters of A-Z, a-z, 0-9, '_' and '-'"
)]
pub struct InvalidSecretToken {
    len: usize,
}

impl From<InvalidSecretToken> for std::io::Error {
    fn from(error: InvalidSecretToken) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}

/// Serves Telegram's webhook POSTs for one [`Chain`].
///
/// * `POST {path}` with a JSON update runs the chain; the answer is sent after the sessions
///   are saved: `200` with the reply set by [`Context::reply_with`] as its JSON body (a
///   Bot API method Telegram performs), or an empty `200`.
/// * A wrong or missing `X-Telegram-Bot-Api-Secret-Token` (when a secret is set) gets `401`,
///   compared in constant time; a body over the limit `413`; a body that is not an update
///   `400`. None of them stops the server.
/// * An update the chain failed on after a handler asked for a session it has no key for (a
///   channel post, a poll; [`Context::lacked_session_key`]) gets
///   [`keyless_status`](Self::keyless_status) (default `200`, logged as a warning).
/// * [`serve`](Self::serve) closes a connection whose request headers take longer than
///   [`header_timeout`](Self::header_timeout) (idle kept-alive ones too), answers `408` to a
///   body slower than [`body_timeout`](Self::body_timeout), and keeps at most
///   [`max_connections`](Self::max_connections) open; at that limit, a new connection takes
///   the place of the one that has waited longest without a request in progress (a slow or
///   idle client), so slow clients cannot keep a good request out. [`bind`](Self::bind) makes
///   a listener whose [`backlog`](Self::backlog) (default 1024) holds a burst of new
///   connections rather than letting the kernel drop them (a client then waits seconds for its
///   SYN to be sent again).
/// * A chain error gets [`error_status`](Self::error_status) (default `500`). Telegram
///   retries updates that did not get a 2xx, so the failed update comes again; with the
///   default [`ErrorPolicy::Save`](crate::ErrorPolicy) its session changes were saved and
///   the retry sees them. Answer `200` instead to drop failed updates.
/// * An update whose session could not be saved, or whose writes were refused because another
///   writer had changed those fields meanwhile
///   ([`SessionError::Conflict`](crate::SessionError::Conflict)), gets the error status even if
///   a middleware swallowed the error (`503` when the error status is a success), so Telegram
///   delivers it again and it runs on the newer values.
///
/// # Example
///
/// ```no_run
/// use typed_session::telegram::Update;
/// use typed_session::{Chain, MemoryStore, Session, SessionMiddleware, Webhook};
///
/// #[derive(Session)]
/// struct Visits {
///     count: u64,
/// }
///
/// # async fn run() -> std::io::Result<()> {
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
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // e.g. sent on SIGTERM
/// let webhook = Webhook::new(chain)
///     .path("/telegram")
///     .secret_token("a-long-random-secret")?;
/// let listener = webhook.bind("127.0.0.1:8080".parse().expect("an address"))?;
/// webhook.serve(listener, async { let _ = stopped.await; }).await
/// # }
/// ```
pub struct Webhook<U> {
    chain: Arc<Chain<U>>,
    path: String,
    secret: Option<String>,
    body_limit: usize,
    error_status: StatusCode,
    keyless_status: StatusCode,
    limits: Limits,
}

/// What [`Webhook::serve`] allows a client.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    body_timeout: Duration,
    max_connections: usize,
    backlog: u32,
}

impl<U> std::fmt::Debug for Webhook<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("path", &self.path)
            .field("secret_token", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("body_limit", &self.body_limit)
            .field("error_status", &self.error_status)
            .field("keyless_status", &self.keyless_status)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

struct Shared<U> {
    chain: Arc<Chain<U>>,
    secret: Option<String>,
    body_limit: usize,
    body_timeout: Duration,
    error_status: StatusCode,
    keyless_status: StatusCode,
    /// What an update whose session is not saved gets: a status Telegram retries, even when
    /// chain errors are answered `200`.
    unsaved_status: StatusCode,
}

impl<U> Webhook<U>
where
    U: DeserializeOwned + Send + Sync + 'static,
{
    /// A webhook for `chain` on `POST /webhook`, with no secret, a 1 MiB body limit and `500`
    /// for chain errors.
    pub fn new(chain: Chain<U>) -> Self {
        Webhook {
            chain: Arc::new(chain),
            path: "/webhook".to_owned(),
            secret: None,
            body_limit: 1 << 20,
            error_status: StatusCode::INTERNAL_SERVER_ERROR,
            keyless_status: StatusCode::OK,
            limits: Limits {
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(10),
                max_connections: 256,
                backlog: 1024,
            },
        }
    }

    /// How long [`serve`](Self::serve) waits for a request's headers, on a new connection and
    /// on an idle kept-alive one, before it closes the connection (default 10 s).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout;
        self
    }

    /// How long a request's body may take to arrive, in full, before the request is answered
    /// `408` (default 10 s). Telegram sends an update in one go.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.limits.body_timeout = timeout;
        self
    }

    /// How many connections [`serve`](Self::serve) keeps open at once (default 256; at least
    /// 1). At the limit, a new connection takes the place of the one that has waited longest
    /// without a request in progress; when every one has a request in progress, new ones wait
    /// in the listener's backlog. Telegram opens at most `setWebhook`'s `max_connections` (40
    /// unless set, 100 at most).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self
    }

    /// How many new connections the listener made by [`bind`](Self::bind) holds until they are
    /// accepted (default 1024; the kernel caps it at `net.core.somaxconn`). A listener the
    /// application binds itself keeps its own (tokio's `TcpListener::bind`: 128).
    pub fn backlog(mut self, connections: u32) -> Self {
        self.limits.backlog = connections.max(1);
        self
    }

    /// A listener on `addr` with this webhook's [`backlog`](Self::backlog), for
    /// [`serve`](Self::serve).
    ///
    /// # Errors
    ///
    /// The socket's: the address is taken, or not this machine's.
    pub fn bind(&self, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(self.limits.backlog)
    }

    /// The path Telegram posts to (the path of the URL given to `setWebhook`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `secret_token` given to `setWebhook`; requests without it are refused with `401`.
    ///
    /// # Errors
    ///
    /// A token Telegram would not accept either: empty (say, from an unset environment
    /// variable, which would otherwise turn authentication off), longer than 256 characters, or
    /// with characters other than `A-Z`, `a-z`, `0-9`, `_` and `-`.
    pub fn secret_token(mut self, token: impl Into<String>) -> Result<Self, InvalidSecretToken> {
        let token = token.into();
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if token.is_empty() || token.len() > 256 || !token.chars().all(allowed) {
            return Err(InvalidSecretToken { len: token.len() });
        }
        self.secret = Some(token);
        Ok(self)
    }

    /// The largest body accepted, in bytes; larger ones get `413`.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The status answered when the chain returns an error (default `500`, which makes
    /// Telegram retry the update).
    pub fn error_status(mut self, status: StatusCode) -> Self {
        self.error_status = status;
        self
    }

    /// The status answered when the chain failed only because the update has no session key
    /// ([`SessionError::NoKey`](crate::SessionError::NoKey): `my_chat_member`, sent when a user blocks the bot, channel
    /// posts, polls, ... reaching a handler that does `ctx.session().await?`). Default `200`,
    /// with a warning logged: running it again would fail the same way, and any other status
    /// makes Telegram deliver it again, for a day. Handlers that do want such updates check
    /// for a key first (or match on `NoKey`).
    pub fn keyless_status(mut self, status: StatusCode) -> Self {
        self.keyless_status = status;
        self
    }

    /// The webhook as an axum [`Router`], to serve yourself or merge into an app. The body
    /// limit and timeout hold; the connection limits ([`header_timeout`](Self::header_timeout),
    /// [`max_connections`](Self::max_connections)) are [`serve`](Self::serve)'s, and are then
    /// up to the server you use.
    pub fn router(self) -> Router {
        let unsaved_status = if self.error_status.is_success() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.error_status
        };
        let shared = Arc::new(Shared {
            chain: self.chain,
            secret: self.secret,
            body_limit: self.body_limit,
            body_timeout: self.limits.body_timeout,
            error_status: self.error_status,
            keyless_status: self.keyless_status,
            unsaved_status,
        });
        Router::new()
            .route(&self.path, post(handle::<U>))
            // The handler reads the body itself, with its limit and deadline.
            .layer(DefaultBodyLimit::disable())
            .with_state(shared)
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, lets the
    /// updates in flight finish and save, retries the saves that failed
    /// ([`Chain::flush`]), and returns.
    ///
    /// # Errors
    ///
    /// The listener's I/O error, or, when sessions are still unsaved after the last retry, an
    /// error of kind [`std::io::ErrorKind::Other`] whose source is the first session's error:
    /// what it names was not saved, and the updates behind it were answered with an error
    /// status, so Telegram delivers them again to the next run.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let chain = Arc::clone(&self.chain);
        let limits = self.limits;
        let router = self.router();
        let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let open = Arc::new(OpenConnections::default());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(%error, "webhook cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let permit = match Arc::clone(&connections).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // At the limit: the connection that has waited longest without a request
                    // in progress makes room; if every one has a request, wait for one to end.
                    open.shed_oldest_idle();
                    tokio::select! {
                        permit = Arc::clone(&connections).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break, // never closed
                        },
                        () = &mut shutdown => break,
                    }
                }
            };
            let tracked = open.add();
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let router = hyper_util::service::TowerToHyperService::new(router.clone());
            let busy = Arc::clone(&tracked.connection);
            let service = hyper::service::service_fn(move |request| {
                use hyper::service::Service as _;
                let working = Working::start(&busy);
                let answer = router.call(request);
                async move {
                    // In progress until the answer's body is sent, so the connection is never
                    // closed to make room while it answers.
                    let answer = answer.await?;
                    Ok::<_, std::convert::Infallible>(answer.map(|body| {
                        axum::body::Body::new(UntilSent {
                            body,
                            _working: working,
                        })
                    }))
                }
            });
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                tokio::select! {
                    served = connection => {
                        if let Err(error) = served {
                            tracing::debug!(%error, "webhook connection closed");
                        }
                    }
                    () = tracked.connection.shed.notified() => {
                        tracing::debug!("webhook connection closed to make room for a new one");
                    }
                }
                open.remove(tracked.id);
                drop(permit);
            });
        }
        drop(listener);
        // Requests in flight finish and persist; idle connections are closed.
        graceful.shutdown().await;
        chain.flush().await.map_err(|error| {
            tracing::error!(%error, "sessions still unsaved at shutdown");
            std::io::Error::other(error)
        })
    }
}

/// The connections [`Webhook::serve`] has open, oldest first.
#[derive(Default)]
struct OpenConnections {
    next: std::sync::atomic::AtomicU64,
    open: parking_lot::Mutex<std::collections::VecDeque<Tracked>>,
}

/// One open connection: how many of its requests are in progress, and the signal that closes
/// it to make room.
#[derive(Default)]
struct Connection {
    requests: std::sync::atomic::AtomicUsize,
    shed: tokio::sync::Notify,
}

/// A connection's place among the open ones.
#[derive(Clone)]
struct Tracked {
    id: u64,
    connection: Arc<Connection>,
}

impl OpenConnections {
    fn add(&self) -> Tracked {
        let tracked = Tracked {
            id: self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            connection: Arc::default(),
        };
        self.open.lock().push_back(tracked.clone());
        tracked
    }

    fn remove(&self, id: u64) {
        self.open.lock().retain(|open| open.id != id);
    }

    /// Closes the oldest connection without a request in progress (still sending its first
    /// headers, or idle between requests), if there is one.
    fn shed_oldest_idle(&self) {
        let open = self.open.lock();
        let idle = open.iter().find(|open| {
            open.connection
                .requests
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
        });
        if let Some(idle) = idle {
            idle.connection.shed.notify_one();
        }
    }
}

/// An answer's body, with the request it answers kept in progress until it is sent (or
/// dropped).
struct UntilSent {
    body: axum::body::Body,
    _working: Working,
}

impl axum::body::HttpBody for UntilSent {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request in progress on a connection, from its headers to its answer.
struct Working(Arc<Connection>);

impl Working {
    fn start(connection: &Arc<Connection>) -> Self {
        connection
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Working(Arc::clone(connection))
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0
            .requests
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

async fn handle<U>(State(hook): State<Arc<Shared<U>>>, request: Request) -> Response
where
    U: DeserializeOwned + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if let Some(secret) = &hook.secret {
        let given = headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !same_secret(given, secret.as_bytes()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > hook.body_limit as u64) {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let body = match tokio::time::timeout(
        hook.body_timeout,
        axum::body::to_bytes(body, hook.body_limit),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return if too_large {
                StatusCode::PAYLOAD_TOO_LARGE.into_response()
            } else {
                StatusCode::BAD_REQUEST.into_response()
            };
        }
        Err(_) => {
            tracing::warn!(timeout = ?hook.body_timeout, "a webhook request's body did not arrive in time");
            return StatusCode::REQUEST_TIMEOUT.into_response();
        }
    };
    let update: U = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(error) => {
            tracing::warn!(%error, "webhook body is not a Telegram update");
            return (
                StatusCode::BAD_REQUEST,
                format!("not a Telegram update: {error}"),
            )
                .into_response();
        }
    };
    let ctx = Context::new(update);
    let outcome = hook.chain.run(&ctx).await;
    if ctx.has_unsaved_session() || ctx.must_retry() {
        // Even if a middleware swallowed the error: Telegram must deliver the update again
        // (after a conflict, the sessions hold the newer values it will then run on).
        tracing::error!(
            error = outcome.err().map(|e| e.to_string()),
            "update handled, but its session is not saved; Telegram delivers it again"
        );
        return hook.unsaved_status.into_response();
    }
    match outcome {
        Ok(()) => match ctx.take_reply() {
            Some(method) => (
                [(header::CONTENT_TYPE, "application/json")],
                method.to_string(),
            )
                .into_response(),
            None => StatusCode::OK.into_response(),
        },
        Err(error) if ctx.lacked_session_key() => {
            tracing::warn!(%error, status = %hook.keyless_status, "an update without a session key failed; answered so that Telegram does not deliver it again");
            hook.keyless_status.into_response()
        }
        Err(error) => {
            tracing::error!(%error, "update failed");
            hook.error_status.into_response()
        }
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_byte_for_byte() {
        assert!(same_secret(b"s3cr3t", b"s3cr3t"));
        assert!(!same_secret(b"s3cr3t", b"s3cr3T"));
        assert!(!same_secret(b"s3cr3", b"s3cr3t"));
        assert!(!same_secret(b"", b"s3cr3t"));
    }
}
