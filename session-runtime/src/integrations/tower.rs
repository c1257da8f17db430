//! [`SessionLayer`]: the session middleware as a tower `Layer` over `http` requests, for axum
//! apps and custom webhook stacks (feature `tower`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::lifecycle::Ended;
use crate::middleware::SessionMiddleware;
use crate::session::Session;

/// Wraps a service so that each request carries session `S`, reachable through the
/// [`LazySession`](crate::LazySession) in its extensions, and the response is returned only after the session
/// is persisted. A response with a 5xx status counts as a failure for the
/// [`ErrorPolicy`](crate::ErrorPolicy); a persist that fails turns the response into an empty
/// `500` (the session stays live and is written by the next request of its key, or by
/// [`SessionMiddleware::flush`]). A stale write under
/// [`StalePolicy::Error`](crate::StalePolicy::Error) is saved and answered with a `500` too,
/// as a failed request.
///
/// Build it from a [`SessionMiddleware`] whose key reads the request:
///
/// ```
/// use typed_session::http::Request;
/// use typed_session::{Key, MemoryStore, Session, SessionLayer, SessionMiddleware};
///
/// #[derive(Session)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// let by_header = Key::custom("x-user-id", |request: &Request<String>| {
///     Some(request.headers().get("x-user-id")?.to_str().ok()?.to_owned())
/// });
/// let layer: SessionLayer<Cart, Request<String>> =
///     SessionMiddleware::with_key(MemoryStore::new(), by_header).build().into();
/// // `tower::ServiceBuilder::new().layer(layer).service(app)`, or axum's `Router::layer`.
/// # let _ = layer;
/// ```
pub struct SessionLayer<S: Session, R> {
    middleware: SessionMiddleware<S, R>,
}

impl<S: Session, R> fmt::Debug for SessionLayer<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("middleware", &self.middleware)
            .finish()
    }
}

impl<S: Session, R> Clone for SessionLayer<S, R> {
    fn clone(&self) -> Self {
        SessionLayer {
            middleware: self.middleware.clone(),
        }
    }
}

impl<S: Session, R> From<SessionMiddleware<S, R>> for SessionLayer<S, R> {
    fn from(middleware: SessionMiddleware<S, R>) -> Self {
        SessionLayer { middleware }
    }
}

impl<S: Session, R, Inner> tower_layer::Layer<Inner> for SessionLayer<S, R> {
    type Service = SessionService<S, R, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        SessionService {
            inner,
            middleware: self.middleware.clone(),
        }
    }
}

/// The service [`SessionLayer`] makes.
pub struct SessionService<S: Session, R, Inner> {
    inner: Inner,
    middleware: SessionMiddleware<S, R>,
}

impl<S: Session, R, Inner: fmt::Debug> fmt::Debug for SessionService<S, R, Inner> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .field("middleware", &self.middleware)
            .finish()
    }
}

impl<S: Session, R, Inner: Clone> Clone for SessionService<S, R, Inner> {
    fn clone(&self) -> Self {
        SessionService {
            inner: self.inner.clone(),
            middleware: self.middleware.clone(),
        }
    }
}

impl<S, B, ResBody, Inner> tower_service::Service<http::Request<B>>
    for SessionService<S, http::Request<B>, Inner>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let scope = self.middleware.begin(Some(&request));
        request.extensions_mut().insert(scope.lazy());
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
                    Ok(internal_error())
                }
                Ended::Retry { error, .. } => {
                    tracing::warn!(%error, "another writer changed the session; the request was not applied, answering 500");
                    Ok(internal_error())
                }
                Ended::Unsaved { error, .. } => {
                    tracing::error!(%error, "session not persisted; answering 500");
                    Ok(internal_error())
                }
            }
        })
    }
}

fn internal_error<B: Default>() -> http::Response<B> {
    let mut response = http::Response::new(B::default());
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    response
}
