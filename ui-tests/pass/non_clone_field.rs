//! A field that is not `Clone` has no getter, but every other method works.
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
                let s = ctx.session().await?;
                s.update_ledger(|l| l.entries.push(1));
                let total: i64 = s.with_ledger(|l| l.entries.iter().sum());
                s.set_ledger(Ledger { entries: vec![total] });
                Ok(())
            })
        });
}
