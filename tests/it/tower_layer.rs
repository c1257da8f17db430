//! The session middleware as a tower layer: the session reaches the inner service through
//! request extensions, and the response comes back only after the session is persisted
//! ("Persist after the chain"), a request without a key gets no session ("Keys"), a service that never touches
//! it costs no store call ("Lazy load"), and a failed persist keeps the session live ("Errors in the chain").
#![cfg(feature = "tower")]

use crate::common;

use std::convert::Infallible;
use std::future::{Ready, poll_fn, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use common::{Counter, ProbeStore, stored};
use tower_layer::Layer;
use tower_service::Service;
use typed_session::http::request::Parts;
use typed_session::http::{Request, Response, StatusCode};
use typed_session::{
    ErrorPolicy, KeyStrategy, LazySession, MemoryStore, SessionError, SessionLayer,
    SessionMiddleware,
};

/// The inner service: counts the request in the session; `/fail` answers 500 after counting;
/// a request without a key answers 401 when the session says so.
#[derive(Clone)]
struct App;

impl Service<Request<String>> for App {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<String>, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        Box::pin(async move {
            let Some(session) = request.extensions().get::<LazySession<Counter>>() else {
                return Ok(respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no session layer",
                ));
            };
            let counter = match session.get().await {
                Ok(counter) => counter,
                Err(SessionError::NoKey { .. }) => {
                    return Ok(respond(StatusCode::UNAUTHORIZED, "who are you?"));
                }
                Err(other) => {
                    return Ok(respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &other.to_string(),
                    ));
                }
            };
            counter.update_count(|c| *c += 1);
            if request.uri().path() == "/fail" {
                return Ok(respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed after counting",
                ));
            }
            Ok(respond(StatusCode::OK, &counter.count().to_string()))
        })
    }
}

fn respond(status: StatusCode, body: &str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response
}

fn by_user_header() -> KeyStrategy<Parts> {
    KeyStrategy::header("x-user-id")
}

fn request(path: &str, user: Option<&str>) -> Request<String> {
    let mut builder = Request::builder().uri(path);
    if let Some(user) = user {
        builder = builder.header("x-user-id", user);
    }
    builder.body(String::new()).expect("a valid request")
}

async fn send<S: Service<Request<String>, Response = Response<String>, Error = Infallible>>(
    service: &mut S,
    request: Request<String>,
) -> Response<String> {
    poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
    service.call(request).await.expect("infallible")
}

#[tokio::test]
async fn the_response_comes_after_the_session_is_persisted() {
    let store = MemoryStore::new();
    let layer: SessionLayer<Counter> = SessionMiddleware::with_key(store.clone(), by_user_header())
        .build()
        .into();
    let mut service = layer.layer(App);

    for expected in 1..=3u64 {
        let response = send(&mut service, request("/", Some("ada"))).await;
        assert_eq!(
            (response.status(), response.body().as_str()),
            (StatusCode::OK, expected.to_string().as_str())
        );
        assert_eq!(
            stored::<u64>(&store, "ada", "count"),
            Some(expected),
            "saved before the answer"
        );
    }
}

#[tokio::test]
async fn a_request_without_a_key_gets_no_session_and_nothing_is_written() {
    let probe = ProbeStore::new(MemoryStore::new());
    let layer: SessionLayer<Counter> =
        SessionMiddleware::with_key(Arc::clone(&probe), by_user_header())
            .build()
            .into();
    let mut service = layer.layer(App);

    let response = send(&mut service, request("/", None)).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn a_server_error_response_is_a_failure_for_the_discard_policy() {
    let store = MemoryStore::new();
    let layer: SessionLayer<Counter> = SessionMiddleware::with_key(store.clone(), by_user_header())
        .on_error(ErrorPolicy::Discard)
        .build()
        .into();
    let mut service = layer.layer(App);

    assert_eq!(
        send(&mut service, request("/", Some("bo"))).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut service, request("/fail", Some("bo")))
            .await
            .status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    assert_eq!(
        stored::<u64>(&store, "bo", "count"),
        Some(1),
        "the failed request's increment was discarded"
    );
}

#[tokio::test]
async fn a_persist_that_fails_turns_the_response_into_a_503_and_keeps_the_session() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions =
        SessionMiddleware::<Counter, Parts>::with_key(Arc::clone(&probe), by_user_header())
            .on_save_failure(typed_session::SaveFailurePolicy::Keep)
            .build();
    let mut service = SessionLayer::from(sessions.clone()).layer(App);

    probe.fail_next_applies(1);
    let response = send(&mut service, request("/", Some("cy"))).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sessions.unsaved_sessions(),
        1,
        "kept live for the next request"
    );
    sessions.flush().await.expect("the store is back");
    assert_eq!(sessions.unsaved_sessions(), 0);
}

/// The layer adds no requirement on the inner service beyond `Clone`: a ready-future one works.
#[derive(Clone)]
struct Plain;

impl Service<Request<String>> for Plain {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        ready(Ok(respond(StatusCode::OK, "plain")))
    }
}

#[tokio::test]
async fn a_service_that_never_touches_the_session_costs_no_store_call() {
    let probe = ProbeStore::new(MemoryStore::new());
    let layer: SessionLayer<Counter> =
        SessionMiddleware::with_key(Arc::clone(&probe), by_user_header())
            .build()
            .into();
    let mut service = layer.layer(Plain);

    assert_eq!(
        send(&mut service, request("/", Some("dee"))).await.body(),
        "plain"
    );
    assert_eq!(probe.calls(), 0);
}

/// Reads `count`, lets another update of the same key (`other`, through the same middleware)
/// set it to 100 and save, then sets `count` to what it read plus one: a stale write.
#[derive(Clone)]
struct StaleApp {
    other: typed_session::Chain<Parts>,
}

impl Service<Request<String>> for StaleApp {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<String>, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let other = self.other.clone();
        Box::pin(async move {
            let session = request.extensions().get::<LazySession<Counter>>();
            let counter = session.expect("layered").get().await.expect("loads");
            let seen = counter.count();
            other
                .run_update(self::request("/", Some("ada")).into_parts().0)
                .await
                .expect("the other update saves");
            counter.set_count(seen + 1);
            Ok(respond(StatusCode::OK, "done"))
        })
    }
}

/// Under the strict stale-write policy the layer fails the request, but its session was
/// saved: it must not be reported as "not persisted".
#[tokio::test]
async fn a_strict_stale_write_is_saved_and_not_reported_as_unsaved() {
    let (logs, _capture) = common::logs::Logs::capture();
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::with_key(store.clone(), by_user_header())
        .on_stale_write(typed_session::StalePolicy::Error)
        .build();
    let other = common::sets_count_to_100(&sessions);
    let layer: SessionLayer<Counter> = sessions.clone().into();
    let mut service = layer.layer(StaleApp { other });

    let response = send(&mut service, request("/", Some("ada"))).await;

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sessions.stats().stale_writes(), 1);
    assert_eq!(
        stored::<u64>(&store, "ada", "count"),
        Some(1),
        "the stale write was saved"
    );
    assert_eq!(sessions.unsaved_sessions(), 0);
    assert!(
        logs.contain("broke a session rule"),
        "logged as a broken rule: {:?}",
        logs.lines()
    );
    assert!(
        !logs.contain("not persisted"),
        "not reported as unsaved: {:?}",
        logs.lines()
    );
}
