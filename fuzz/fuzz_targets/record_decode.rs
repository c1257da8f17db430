//! A stored row this crate did not write (any bytes in the JSON columns of a SQLite row),
//! loaded through the store and decoded into a session: an error or a session, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use typed_session::telegram::Update;
use typed_session::{Chain, Session, SessionMiddleware, SqliteStore, Store};

#[derive(Session, Clone)]
struct Profile {
    count: u64,
    lang: String,
    tags: Vec<String>,
    #[session(reset_on_error)]
    note: Option<String>,
}

fuzz_target!(|columns: (String, String, String)| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("memory");
        store.migrate().await.expect("migrate");
        let (data, versions, writers) = columns;
        store
            .connection()
            .execute(
                "INSERT INTO typed_sessions (key, data, versions, writers) VALUES ('Profile:1:1', ?1, ?2, ?3)",
                (&data, &versions, &writers),
            )
            .expect("a row");
        let _ = store.load("Profile:1:1").await;
        let chain = Chain::new()
            .with(SessionMiddleware::<Profile, Update>::new(store))
            .handler(|ctx| {
                Box::pin(async move {
                    ctx.session().await?.update_count(|c| *c = c.wrapping_add(1));
                    Ok(())
                })
            });
        let _ = chain.run_update(Update::text(1, 1, 1, "x")).await;
    });
});
