//! [`Webhook`]: an HTTP server for Telegram's webhook that runs the chain and answers only
//! after every session of the update is persisted (feature `webhook`).
//!
//! Telegraf's docs ask webhook users to turn `webhookReply` off, because the HTTP answer can
//! end the update before its session is written. Here the answer is sent when
//! [`Chain::run`] has returned, and that happens only once every session middleware has
//! persisted: a webhook reply cannot race the save.
//!
//! Telegram sends the next update of a chat only after the answer to the previous one, so
//! several replicas of a bot behind a load balancer never work on one chat's session at the
//! same time; with field-level patches, different chats' writes never collide either.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
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
///   are persisted: `200` with the reply set by [`Context::reply_with`] as its JSON body (a
///   Bot API method Telegram performs), or an empty `200`.
/// * A wrong or missing `X-Telegram-Bot-Api-Secret-Token` (when a secret is set) gets `401`,
///   compared in constant time; a body over the limit `413`; a body that is not an update
///   `400`. None of them stops the server.
/// * A chain error gets [`error_status`](Self::error_status) (default `500`). Telegram
///   retries updates that did not get a 2xx, so the failed update comes again; with the
///   default [`ErrorPolicy::Persist`](crate::ErrorPolicy) its session changes were saved and
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
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // e.g. sent on SIGTERM
/// Webhook::new(chain)
///     .path("/telegram")
///     .secret_token("a-long-random-secret")?
///     .serve(listener, async { let _ = stopped.await; })
///     .await
/// # }
/// ```
pub struct Webhook<U> {
    chain: Arc<Chain<U>>,
    path: String,
    secret: Option<String>,
    body_limit: usize,
    error_status: StatusCode,
}

impl<U> std::fmt::Debug for Webhook<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("path", &self.path)
            .field("secret_token", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("body_limit", &self.body_limit)
            .field("error_status", &self.error_status)
            .finish_non_exhaustive()
    }
}

struct Shared<U> {
    chain: Arc<Chain<U>>,
    secret: Option<String>,
    error_status: StatusCode,
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
        }
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

    /// The webhook as an axum [`Router`], to serve yourself or merge into an app.
    pub fn router(self) -> Router {
        let unsaved_status = if self.error_status.is_success() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.error_status
        };
        let shared = Arc::new(Shared {
            chain: self.chain,
            secret: self.secret,
            error_status: self.error_status,
            unsaved_status,
        });
        Router::new()
            .route(&self.path, post(handle::<U>))
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(shared)
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, lets the
    /// updates in flight finish and persist, retries the saves that failed
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
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        chain.flush().await.map_err(|error| {
            tracing::error!(%error, "sessions still unsaved at shutdown");
            std::io::Error::other(error)
        })
    }
}

async fn handle<U>(State(hook): State<Arc<Shared<U>>>, headers: HeaderMap, body: Bytes) -> Response
where
    U: DeserializeOwned + Send + Sync + 'static,
{
    if let Some(secret) = &hook.secret {
        let given = headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !same_secret(given, secret.as_bytes()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
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
