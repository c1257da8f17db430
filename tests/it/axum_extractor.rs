//! axum: the derive's handle as an extractor, `SessionLayer::new` in one call, session errors
//! answered with a status per kind and a body that names nothing internal, keys from an
//! authenticated extension, and the response only after the save ("Persist after the chain").
#![cfg(feature = "axum")]

use crate::common;

use std::convert::Infallible;
use std::future::poll_fn;
use std::sync::Arc;

use common::{Counter, CounterHandle, ProbeStore, stored};
use tower_service::Service;
use typed_session::axum::body::{Body, to_bytes};
use typed_session::axum::routing::{get, post};
use typed_session::axum::{Extension, Router};
use typed_session::http::request::Parts;
use typed_session::http::{Request, StatusCode};
use typed_session::{
    KeyStrategy, LazySession, MemoryStore, SessionError, SessionLayer, SessionMiddleware,
};

async fn count(counter: CounterHandle<'static>) -> Result<String, SessionError> {
    Ok(counter
        .update_count(|c| {
            *c += 1;
            *c
        })
        .to_string())
}

fn app(layer: SessionLayer<Counter>) -> Router {
    Router::new().route("/count", post(count)).layer(layer)
}

fn request(path: &str, user: Option<&str>) -> Request<Body> {
    let mut builder = Request::post(path);
    if let Some(user) = user {
        builder = builder.header("x-user-id", user);
    }
    builder.body(Body::empty()).expect("a valid request")
}

async fn send(app: &mut Router, request: Request<Body>) -> (StatusCode, String) {
    poll_fn(|cx| <Router as Service<Request<Body>>>::poll_ready(app, cx))
        .await
        .unwrap_or_else(|never: Infallible| match never {});
    let response = app
        .call(request)
        .await
        .unwrap_or_else(|never| match never {});
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("a body");
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

#[tokio::test]
async fn the_handle_is_an_extractor_and_the_answer_comes_after_the_save() {
    let store = MemoryStore::new();
    let mut app = app(SessionLayer::new(
        store.clone(),
        KeyStrategy::header("x-user-id"),
    ));

    for expected in 1..=3u64 {
        let answer = send(&mut app, request("/count", Some("ada"))).await;
        assert_eq!(answer, (StatusCode::OK, expected.to_string()));
        assert_eq!(
            stored::<u64>(&store, "ada", "count"),
            Some(expected),
            "saved before the answer"
        );
    }
}

#[tokio::test]
async fn a_request_without_a_key_gets_400_and_nothing_is_read_or_written() {
    let probe = ProbeStore::new(MemoryStore::new());
    let mut app = app(SessionLayer::new(
        Arc::clone(&probe),
        KeyStrategy::header("x-user-id"),
    ));

    let answer = send(&mut app, request("/count", None)).await;

    assert_eq!(
        answer,
        (
            StatusCode::BAD_REQUEST,
            "no session key in this request".to_owned()
        )
    );
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn a_store_that_fails_the_load_gets_503_with_a_body_that_names_nothing_internal() {
    let probe = ProbeStore::new(MemoryStore::new());
    probe.fail_next_loads(1);
    let mut app = app(SessionLayer::new(
        Arc::clone(&probe),
        KeyStrategy::header("x-user-id"),
    ));

    let (status, body) = send(&mut app, request("/count", Some("ada"))).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "sessions are unavailable; try again");
    assert_eq!(
        send(&mut app, request("/count", Some("ada"))).await.1,
        "1",
        "the next one loads"
    );
}

#[tokio::test]
async fn a_route_without_the_layer_gets_500_not_a_panic() {
    let mut app = Router::new().route("/count", post(count));

    let answer = send(&mut app, request("/count", Some("ada"))).await;

    assert_eq!(
        answer,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_owned()
        )
    );
}

/// The identity an authentication layer checked, put in the request's extensions.
#[derive(Clone)]
struct UserId(u64);

#[tokio::test]
async fn a_key_from_an_authenticated_extension_ignores_what_the_client_claims() {
    let store = MemoryStore::new();
    let layer = SessionLayer::<Counter>::new(
        store.clone(),
        KeyStrategy::from_extension(|user: &UserId| format!("user-{}", user.0)),
    );
    // The last layer runs first: the "authentication" sets the identity, then the session.
    let mut app = app(layer).layer(Extension(UserId(42)));

    let answer = send(&mut app, request("/count", Some("someone-else"))).await;

    assert_eq!(answer, (StatusCode::OK, "1".to_owned()));
    assert_eq!(stored::<u64>(&store, "user-42", "count"), Some(1));
    assert_eq!(stored::<u64>(&store, "someone-else", "count"), None);
}

#[tokio::test]
async fn a_lazy_session_that_is_never_loaded_costs_no_store_call() {
    let probe = ProbeStore::new(MemoryStore::new());
    let layer = SessionLayer::<Counter>::new(Arc::clone(&probe), KeyStrategy::header("x-user-id"));
    let mut app = Router::new()
        .route(
            "/peek",
            get(|_: LazySession<Counter>| async { "not loaded" }),
        )
        .layer(layer);

    let answer = send(
        &mut app,
        Request::get("/peek")
            .header("x-user-id", "ada")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;

    assert_eq!(answer, (StatusCode::OK, "not loaded".to_owned()));
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn a_write_another_writer_overtook_is_answered_409_and_not_saved() {
    let store = MemoryStore::new();
    // Another replica: its own middleware on the same store.
    let replica = SessionMiddleware::<Counter, Parts>::with_key(
        store.clone(),
        KeyStrategy::header("x-user-id"),
    )
    .build();
    let other = common::sets_count_to_100(&replica);
    let mut app = Router::new()
        .route(
            "/overtaken",
            post(move |counter: CounterHandle<'static>| {
                let other = other.clone();
                async move {
                    let seen = counter.count();
                    let parts = request("/", Some("ada")).into_parts().0;
                    other
                        .run_update(parts)
                        .await
                        .expect("the other replica saves");
                    counter.set_count(seen + 1);
                    "written"
                }
            }),
        )
        .layer(SessionLayer::<Counter>::new(
            store.clone(),
            KeyStrategy::header("x-user-id"),
        ));

    let (status, _) = send(&mut app, request("/overtaken", Some("ada"))).await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        stored::<u64>(&store, "ada", "count"),
        Some(100),
        "the other replica's write stands"
    );
}
