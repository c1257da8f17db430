//! An axum shopping cart whose state is a typed session: handlers take `CartHandle<'static>`
//! as an extractor, `?` on a session error answers with a status for its kind, and each
//! response is sent after the cart is saved (only the fields the request changed).
//!
//! The cart is keyed by the user an authentication layer checked (a toy bearer-token table
//! here), never by what the client claims in a header.
//!
//! `cargo run --features axum --example axum_cart`, then, from another shell:
//!
//! ```text
//! curl -X POST -H 'authorization: Bearer ada-token' -d apples localhost:3000/cart
//! curl -H 'authorization: Bearer ada-token' localhost:3000/cart
//! ```

use typed_session::axum::extract::Request;
use typed_session::axum::http::StatusCode;
use typed_session::axum::middleware::{self, Next};
use typed_session::axum::response::Response;
use typed_session::axum::routing::get;
use typed_session::axum::{self, Router};
use typed_session::{KeyStrategy, MemoryStore, Session, SessionError, SessionLayer};

#[derive(Session)]
struct Cart {
    items: Vec<String>,
    #[default(0)]
    checkouts: u32,
}

async fn show(cart: CartHandle<'static>) -> String {
    let items = cart.items();
    format!("{} items: {}\n", items.len(), items.join(", "))
}

async fn add(
    cart: CartHandle<'static>,
    item: String,
) -> Result<String, (StatusCode, &'static str)> {
    let item = item.trim().to_owned();
    if item.is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "send the item as the body\n",
        ));
    }
    let count = cart.update_items(|items| {
        items.push(item);
        items.len()
    });
    Ok(format!("{count} items\n"))
}

async fn checkout(cart: CartHandle<'static>) -> Result<String, SessionError> {
    let items = cart.items();
    cart.reset_items();
    let n = cart.update_checkouts(|n| {
        *n += 1;
        *n
    });
    Ok(format!("checkout {n}: {} items\n", items.len()))
}

/// Who the caller is: set by authentication, never read from a client-chosen header.
#[derive(Clone)]
struct UserId(u64);

/// A toy authentication layer: two fixed bearer tokens. A real app checks a signed token or
/// a login session here.
async fn authenticate(mut request: Request, next: Next) -> Result<Response, StatusCode> {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let user = match token {
        Some("ada-token") => UserId(1),
        Some("bob-token") => UserId(2),
        _ => return Err(StatusCode::UNAUTHORIZED),
    };
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

#[tokio::main]
async fn main() -> Result<(), typed_session::BoxError> {
    // Any store works here: `SqliteStore`, `PostgresStore`, `RedisStore`, ... with its feature.
    let store = MemoryStore::new();
    let sessions = SessionLayer::<Cart>::new(
        store,
        KeyStrategy::from_extension(|user: &UserId| user.0.to_string()),
    );
    let app = Router::new()
        .route("/cart", get(show).post(add))
        .route("/cart/checkout", axum::routing::post(checkout))
        // The last layer runs first: authentication, then the session keyed by its result.
        .layer(sessions.clone())
        .layer(middleware::from_fn(authenticate));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("cart on http://{addr}/cart");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Every response was sent after its save; a save that failed answered 503 and is retried
    // here once more.
    sessions.middleware().flush().await?;
    Ok(())
}
