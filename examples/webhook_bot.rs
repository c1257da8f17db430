//! A Telegram webhook bot, offline on 127.0.0.1:8080, with its sessions in a SQLite file.
//! It answers each update with a webhook reply (a `sendMessage` in the HTTP response), sent
//! only after the session is saved, and exports its session metrics in Prometheus's text
//! format on 127.0.0.1:9090/metrics.
//!
//! `cargo run --features sqlite,webhook,metrics --example webhook_bot`, then post an update:
//!
//! ```sh
//! curl -s localhost:8080/telegram -H 'X-Telegram-Bot-Api-Secret-Token: change-me' \
//!   -H 'Content-Type: application/json' \
//!   -d '{"update_id":1,"message":{"message_id":1,"date":1700000000,"text":"hi",
//!        "from":{"id":42,"is_bot":false,"first_name":"Ada"},"chat":{"id":42,"type":"private"}}}'
//! ```
//!
//! and read the metrics: `curl -s localhost:9090/metrics`.
//!
//! Stop it with Ctrl-C (in-flight updates finish and persist) and start it again: the count
//! goes on.

use metrics_exporter_prometheus::PrometheusBuilder;
use typed_session::axum::{Router, routing::get};
use typed_session::telegram::Update;
use typed_session::{BoxError, Chain, Session, SessionMiddleware, SqliteStore, Webhook};

#[derive(Session)]
struct Profile {
    #[default(0)]
    messages: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // Every session metric goes to this recorder; /metrics renders it.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let exporter = Router::new().route("/metrics", get(move || async move { metrics.render() }));
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
    tokio::spawn(async move { typed_session::axum::serve(metrics_listener, exporter).await });

    let store = SqliteStore::connect("sqlite://webhook-sessions.db").await?;
    store.migrate().await?;
    let chain = Chain::new()
        .with(SessionMiddleware::<Profile, Update>::new(store))
        .handler(|ctx| {
            Box::pin(async move {
                let profile = ctx.session().await?;
                profile.update_messages(|m| *m += 1);
                if let Some(chat) = ctx.update().any_message().map(|m| m.chat.id) {
                    ctx.reply_with(serde_json::json!({
                        "method": "sendMessage",
                        "chat_id": chat,
                        "text": format!("You have written {} messages.", profile.messages()),
                    }));
                }
                Ok(())
            })
        });

    let webhook = Webhook::new(chain)
        .path("/telegram")
        .secret_token("change-me")?;
    // A listener with the webhook's backlog (1024), so a burst of connections waits for its
    // turn instead of being dropped.
    let listener = webhook.bind("127.0.0.1:8080".parse()?)?;
    println!(
        "webhook on http://127.0.0.1:8080/telegram (secret token: change-me); Ctrl-C stops it"
    );
    let served = webhook
        .serve(listener, async {
            // Stop accepting on Ctrl-C; updates in flight still finish and persist.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match served {
        Ok(()) => {
            println!("stopped; every session is saved");
            Ok(())
        }
        Err(error) => {
            eprintln!("stopped; some sessions are NOT saved: {error}");
            Err(error.into())
        }
    }
}
