//! [`SessionLayer`]: the session middleware as a tower `Layer` over `http` requests, for axum
//! apps and custom webhook stacks (feature `tower`).

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::error::{BoxError, SessionError};
use crate::handle::{LazySession, Slot};
use crate::middleware::{FinishOnDrop, SessionMiddleware, finish};
use crate::session::Session;
use crate::store::BoxFuture;

/// Wraps a service so that each request carries session `S`, reachable through the
/// [`LazySession`] in its extensions, and the response is returned only after the session
/// is persisted. A response with a 5xx status counts as a failure for the
/// [`ErrorPolicy`](crate::ErrorPolicy); a persist that fails turns the response into an empty
/// `500` (the session stays live and is written by the next request of its key, or by
/// [`SessionMiddleware::flush`]).
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
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let key = self.middleware.key.shared_key_of(&request);
        let slot = Arc::new(Slot::new(Arc::clone(&self.middleware.shared), key));
        request
            .extensions_mut()
            .insert(LazySession::new(Arc::clone(&slot)));
        // The instance that was driven to readiness serves this call (tower's clone-and-swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let guard = FinishOnDrop(Some(slot));
            let result = inner.call(request).await;
            let Some(holding) = guard.defuse().and_then(|slot| slot.finish()) else {
                return result;
            };
            let outcome: Result<(), BoxError> = match &result {
                Ok(response) if !response.status().is_server_error() => Ok(()),
                Ok(response) => Err(format!("the service answered {}", response.status()).into()),
                Err(_) => Err("the service failed".into()),
            };
            match finish(holding, outcome).await {
                Err(error) if error.downcast_ref::<SessionError>().is_some() => {
                    tracing::error!(%error, "session not persisted; answering 500");
                    let mut failed = http::Response::new(ResBody::default());
                    *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(failed)
                }
                _ => result,
            }
        })
    }
}
