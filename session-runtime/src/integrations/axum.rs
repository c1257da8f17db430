//! axum: the typed handle as an extractor, and session errors as responses (feature `axum`).
//!
//! With [`SessionLayer`](crate::SessionLayer) on the router, a handler takes the session's
//! handle as an argument, and `?` on a session error answers the request:
//!
//! ```
//! use typed_session::axum::{Router, routing::post};
//! use typed_session::{KeyStrategy, MemoryStore, Session, SessionError, SessionLayer};
//!
//! #[derive(Session)]
//! struct Cart {
//!     items: Vec<String>,
//! }
//!
//! async fn add(cart: CartHandle<'static>, item: String) -> Result<String, SessionError> {
//!     let count = cart.update_items(|items| {
//!         items.push(item);
//!         items.len()
//!     });
//!     Ok(format!("{count} items"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/cart", post(add))
//!     .layer(SessionLayer::<Cart>::new(MemoryStore::new(), KeyStrategy::header("x-user-id")));
//! # let _ = app;
//! ```
//!
//! The handle is loaded when the handler is called (a handler that does not take it costs no
//! store call; [`LazySession<S>`] is an extractor too, for loading only on some paths). The
//! response is sent after the session is saved. A session error answers with a status for its
//! kind and a short body that names no key, store or field (the whole error is logged):
//!
//! | error | status | body |
//! |---|---|---|
//! | [`NoKey`](SessionError::NoKey): the request does not say whose session it is | `400` | `no session key in this request` |
//! | [`Conflict`](SessionError::Conflict): another writer changed the session first | `409` | `the session changed under this request; send it again` |
//! | [`Load`](SessionError::Load), [`Save`](SessionError::Save), [`Busy`](SessionError::Busy), [`LeaseLost`](SessionError::LeaseLost) | `503` | `sessions are unavailable; try again` |
//! | the rest (no layer, a value that does not decode, ...) | `500` | `internal error` |

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::error::SessionError;
use crate::integrations::tower::status_of;
use crate::lifecycle::LazySession;
use crate::session::Session;

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let status = status_of(&self);
        let body = match status.as_u16() {
            400 => "no session key in this request",
            409 => "the session changed under this request; send it again",
            503 => "sessions are unavailable; try again",
            _ => "internal error",
        };
        if status.is_server_error() {
            tracing::error!(error = %self, %status, "session error answered");
        } else {
            tracing::warn!(error = %self, %status, "session error answered");
        }
        (status, body).into_response()
    }
}

/// The request's [`LazySession<S>`], loaded on first [`get`](LazySession::get). Rejected with
/// [`SessionError::NotAttached`] (a `500`) when no [`SessionLayer`](crate::SessionLayer) of
/// `S` is on the route.
impl<S: Session, St: Send + Sync> FromRequestParts<St> for LazySession<S> {
    type Rejection = SessionError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        lazy_of::<S>(parts).ok_or(SessionError::NotAttached { session: S::NAME })
    }
}

fn lazy_of<S: Session>(parts: &Parts) -> Option<LazySession<S>> {
    parts.extensions.get::<LazySession<S>>().cloned()
}

/// What the derive's extractor impl for `{Name}Handle<'static>` calls: the request's session,
/// loaded.
pub fn extract_handle<S: Session>(
    parts: &Parts,
) -> impl Future<Output = Result<S::Handle<'static>, SessionError>> + Send + 'static {
    let lazy = lazy_of::<S>(parts);
    async move {
        match lazy {
            Some(lazy) => lazy.get().await,
            None => Err(SessionError::NotAttached { session: S::NAME }),
        }
    }
}
