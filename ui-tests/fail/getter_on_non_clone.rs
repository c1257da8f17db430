//! A field whose type is not `Clone` has no copying getter; the error says to use `with_*`.
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Ledger {
    entries: Vec<i64>,
}

#[derive(Session)]
struct Book {
    ledger: Ledger,
}

fn main() {
    let _ = Chain::new()
        .with(SessionMiddleware::<Book, Update>::new(MemoryStore::new()))
        .handler(|ctx| {
            Box::pin(async move {
                let _ledger = ctx.session().await?.ledger();
                Ok(())
            })
        });
}
