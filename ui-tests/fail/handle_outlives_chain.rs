//! "Late access": a session handle borrows the context, so it cannot be moved into a spawned task that
//! may outlive the chain.
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(Session)]
struct Profile {
    count: u64,
}

fn main() {
    let _ = Chain::new()
        .with(SessionMiddleware::<Profile, Update>::new(MemoryStore::new()))
        .handler(|ctx| {
            Box::pin(async move {
                let session = ctx.session().await?;
                tokio::spawn(async move {
                    session.update_count(|c| *c += 1);
                });
                Ok(())
            })
        });
}
