//! "Late access": a borrow of session state cannot be held across `.await`; state is lent only to
//! synchronous closures.
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(Session)]
struct Profile {
    name: String,
}

async fn greet(_name: &str) {}

fn main() {
    let _ = Chain::new()
        .with(SessionMiddleware::<Profile, Update>::new(MemoryStore::new()))
        .handler(|ctx| {
            Box::pin(async move {
                let session = ctx.session().await?;
                let name: &String = session.with_name(|name| name);
                greet(name).await;
                Ok(())
            })
        });
}
