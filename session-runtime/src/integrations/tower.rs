//! [`SessionLayer`]: the session middleware as a tower `Layer` over `http` requests, for axum
//! apps and custom webhook stacks (feature `tower`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::request::Parts;

use crate::error::SessionError;
use crate::key::KeyStrategy;
use crate::lifecycle::Ended;
use crate::middleware::SessionMiddleware;
use crate::session::Session;
use crate::store::Store;

/// Wraps a service so that each request carries session `S`, reachable through the
/// [`LazySession`](crate::LazySession) in its extensions (with the `axum` feature, through the
/// typed handle as an extractor), and the response is returned only after the session is
/// saved. A response with a 5xx status counts as a failure for the
/// [`ErrorPolicy`](crate::ErrorPolicy). When the session cannot be saved, the response is
/// replaced by an empty one: `503` for a store that failed (under
/// [`SaveFailurePolicy::Keep`](crate::SaveFailurePolicy::Keep) the session stays live and is written by
/// the next request of its key, or by [`SessionMiddleware::flush`]), `409` for writes another
/// writer's change refused (nothing of the request was saved: it may be sent again). A stale
/// write under [`StalePolicy::Error`](crate::StalePolicy::Error) is saved and answered with a
/// `500`, as a failed request.
///
/// The key is read from the request's head ([`http::request::Parts`]: headers, extensions,
/// URI), never its body, so the layer works over any body type:
///
/// ```
/// use typed_session::{KeyStrategy, MemoryStore, Session, SessionLayer};
///
/// #[derive(Session)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// /// Set by the app's authentication layer, which runs before this one.
/// #[derive(Clone)]
/// struct UserId(u64);
///
/// let layer = SessionLayer::<Cart>::new(
///     MemoryStore::new(),
///     KeyStrategy::from_extension(|user: &UserId| user.0.to_string()),
/// );
/// // `Router::new().route(..).layer(layer).layer(auth)` in axum (the last layer runs first),
/// // or `tower::ServiceBuilder::new().layer(auth).layer(layer).service(app)`.
/// # let _ = layer;
/// ```
///
/// # Whose key is it?
///
/// A key taken from the request as the client sent it (a header, a query parameter, a
/// cookie that is not signed) is whatever the client says: anyone can send `x-user-id: 42`
/// and read and write user 42's session. Key sessions by an identity your authentication has
/// checked: [`KeyStrategy::from_extension`] reads what an earlier layer put in the request's
/// extensions. [`KeyStrategy::header`] is for headers a trusted proxy sets, and for tests.
pub struct SessionLayer<S: Session> {
    middleware: SessionMiddleware<S, Parts>,
}

impl<S: Session> SessionLayer<S> {
    /// A layer with the session type's defaults and this key: the one call most apps need.
    /// For the error, save-failure or expiry policies, build the middleware with
    /// [`SessionMiddleware::with_key`] and convert it with `.into()`.
    pub fn new(store: impl Store, key: KeyStrategy<Parts>) -> Self {
        SessionMiddleware::with_key(store, key).build().into()
    }

    /// The middleware inside, for its [`stats`](SessionMiddleware::stats) and
    /// [`flush`](SessionMiddleware::flush).
    pub fn middleware(&self) -> &SessionMiddleware<S, Parts> {
        &self.middleware
    }
}

impl<S: Session> fmt::Debug for SessionLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("middleware", &self.middleware)
            .finish()
    }
}

impl<S: Session> Clone for SessionLayer<S> {
    fn clone(&self) -> Self {
        SessionLayer {
            middleware: self.middleware.clone(),
        }
    }
}

impl<S: Session> From<SessionMiddleware<S, Parts>> for SessionLayer<S> {
    fn from(middleware: SessionMiddleware<S, Parts>) -> Self {
        SessionLayer { middleware }
    }
}

impl<S: Session, Inner> tower_layer::Layer<Inner> for SessionLayer<S> {
    type Service = SessionService<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        SessionService {
            inner,
            middleware: self.middleware.clone(),
        }
    }
}

impl KeyStrategy<Parts> {
    /// A key read from the request header `name`; a request without it (or with a value that
    /// is not visible ASCII) has no session.
    ///
    /// The client chooses this header: use it only for one a trusted proxy in front of the app
    /// sets (or strips), or in tests. See [`SessionLayer`], "Whose key is it?".
    pub fn header(name: &'static str) -> Self {
        KeyStrategy::custom(name, move |parts: &Parts| {
            Some(parts.headers.get(name)?.to_str().ok()?.to_owned())
        })
    }

    /// A key computed from a value of type `T` in the request's extensions, put there by a
    /// layer that runs before the session layer (authentication, typically); a request
    /// without one has no session. The key's name in error messages is `T`'s type name.
    pub fn from_extension<T: Send + Sync + 'static>(
        key: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Self {
        KeyStrategy::custom(std::any::type_name::<T>(), move |parts: &Parts| {
            parts.extensions.get::<T>().map(&key)
        })
    }
}

/// The service [`SessionLayer`] makes.
pub struct SessionService<S: Session, Inner> {
    inner: Inner,
    middleware: SessionMiddleware<S, Parts>,
}

impl<S: Session, Inner: fmt::Debug> fmt::Debug for SessionService<S, Inner> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .field("middleware", &self.middleware)
            .finish()
    }
}

impl<S: Session, Inner: Clone> Clone for SessionService<S, Inner> {
    fn clone(&self) -> Self {
        SessionService {
            inner: self.inner.clone(),
            middleware: self.middleware.clone(),
        }
    }
}

impl<S, B, ResBody, Inner> tower_service::Service<http::Request<B>> for SessionService<S, Inner>
where
    S: Session,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
    Inner: tower_service::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Inner::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let scope = self.middleware.begin(Some(&parts));
        parts.extensions.insert(scope.lazy());
        let request = http::Request::from_parts(parts, body);
        // The instance that was driven to readiness serves this call (tower's clone-and-swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let result = inner.call(request).await;
            let failed = match &result {
                Ok(response) => response.status().is_server_error(),
                Err(_) => true,
            };
            match scope.end(if failed { Err(()) } else { Ok(()) }).await {
                Ended::Saved | Ended::Failed(()) => result,
                Ended::Refused(error) => {
                    tracing::warn!(%error, "session saved, but the request broke a session rule; answering 500");
                    Ok(empty(http::StatusCode::INTERNAL_SERVER_ERROR))
                }
                Ended::Retry { error, .. } => {
                    let status = status_of(&error);
                    tracing::warn!(%error, %status, "the request's session writes were not saved; it may be sent again");
                    Ok(empty(status))
                }
                Ended::Unsaved { error, .. } => {
                    let status = status_of(&error);
                    tracing::error!(%error, %status, "session not persisted");
                    Ok(empty(status))
                }
            }
        })
    }
}

/// The HTTP status a session error answers a request with: `400` when the request carries no
/// session key, `409` when another writer changed the session first (nothing was saved; send
/// it again), `503` when the store cannot be reached or the key stayed busy (try again), `500`
/// for the rest (a bug in the app: no layer, a use after the response, a value that does not
/// encode or decode).
pub(crate) fn status_of(error: &SessionError) -> http::StatusCode {
    use http::StatusCode;
    match error {
        SessionError::NoKey { .. } => StatusCode::BAD_REQUEST,
        SessionError::Conflict { .. } => StatusCode::CONFLICT,
        SessionError::Load { .. }
        | SessionError::Save { .. }
        | SessionError::Busy { .. }
        | SessionError::LeaseLost { .. } => StatusCode::SERVICE_UNAVAILABLE,
        SessionError::NotAttached { .. }
        | SessionError::AfterSave { .. }
        | SessionError::Decode { .. }
        | SessionError::Migrate { .. }
        | SessionError::Encode { .. }
        | SessionError::StaleWrite { .. }
        | SessionError::Interrupted { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn empty<B: Default>(status: http::StatusCode) -> http::Response<B> {
    let mut response = http::Response::new(B::default());
    *response.status_mut() = status;
    response
}
