//! A bot whose sessions live in a SQLite file and survive a restart: run it twice, and the
//! counts go on from where the first run left them.
//!
//! `cargo run --features sqlite --example persistent`
//! (`-- --fresh` deletes the database first; `-- --db PATH` picks another file)

use std::sync::Arc;

use typed_session::telegram::Update;
use typed_session::{BoxError, Chain, Session, SessionMiddleware, SqliteStore};

#[derive(Session, Clone, Debug)]
struct Profile {
    #[default(0)]
    messages: u64,
    #[default(String::from("en"))]
    lang: String,
    first_seen_update: Option<i64>,
}

fn reply(session: &ProfileHandle<'_>, text: &str) -> String {
    let n = session.messages();
    match (session.lang().as_str(), text) {
        (_, "/start") => "Welcome! Send me anything; /de and /en switch language.".to_owned(),
        ("de", _) => format!(
            "Nachricht Nummer {n}, seit Update {:?}",
            session.first_seen_update()
        ),
        _ => format!(
            "message number {n}, first seen in update {:?}",
            session.first_seen_update()
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let db = args
        .iter()
        .position(|a| a == "--db")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "bot-sessions.db".to_owned());
    if args.iter().any(|a| a == "--fresh") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{db}{suffix}"));
        }
    }
    let existed = std::path::Path::new(&db).exists();

    let store = SqliteStore::connect(&format!("sqlite://{db}")).await?;
    store.migrate().await?;
    let sessions = SessionMiddleware::<Profile, Update>::new(store.clone());
    let chain = Arc::new(
        Chain::new()
            .with(sessions.clone())
            .with_fn(|ctx, next| {
                Box::pin(async move {
                    let session = ctx.session().await?;
                    match ctx.update().text_of() {
                        Some("/de") => session.set_lang("de"),
                        Some("/en") => session.reset_lang(),
                        _ => {
                            session.update_messages(|m| *m += 1);
                            if session.first_seen_update().is_none() {
                                session.set_first_seen_update(Some(ctx.update().update_id));
                            }
                        }
                    }
                    next.run(ctx).await
                })
            })
            .handler(|ctx| {
                Box::pin(async move {
                    let session = ctx.session().await?;
                    let text = ctx.update().text_of().unwrap_or_default();
                    println!(
                        "  {:>9} says {text:<8} -> {}",
                        session.key(),
                        reply(&session, text)
                    );
                    Ok(())
                })
            }),
    );

    println!("{} {db}", if existed { "reopened" } else { "created" });
    // Each run, three users write; Telegram's update ids only grow, so take them from the clock,
    // fine enough that two runs started one right after the other never reuse an id (an id
    // already saved is recognised as a redelivery and not applied again).
    let base = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros(),
    )? * 10;
    let script = [
        (1001, "/start"),
        (2002, "hi"),
        (1001, "hello"),
        (3003, "/de"),
        (2002, "again"),
        (3003, "hallo"),
        (1001, "bye"),
    ];
    for (i, (user, text)) in script.into_iter().enumerate() {
        chain
            .run_update(Update::text(base + i as i64, user, user, text))
            .await?;
    }

    println!("\nstored sessions (SELECT key, data FROM typed_sessions):");
    let rows: Vec<(String, String)> = {
        let connection = store.connection();
        let mut query = connection.prepare("SELECT key, data FROM typed_sessions ORDER BY key")?;
        query
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (key, data) in rows {
        println!("  {key:>9}  {data}");
    }
    println!(
        "\n{} writes this run. Run it again: the counts continue from here.",
        sessions.stats().writes()
    );
    Ok(())
}
