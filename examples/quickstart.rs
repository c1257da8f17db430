use typed_session::{Chain, MemoryStore, Session, SessionMiddleware, Update};

#[derive(Session, Clone, Debug)]
struct Profile {
    #[default(0)]
    count: u64,
    #[default(String::from("en"))]
    lang: String,
    last_seen: Option<i64>,
    #[session(skip)]
    scratch: Vec<u8>,
}

#[tokio::main]
async fn main() -> Result<(), typed_session::BoxError> {
    let store = MemoryStore::new();
    let sessions = SessionMiddleware::<Profile, Update>::new(store.clone());
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let s = ctx.session().await?;
            s.update_count(|c| *c += 1);
            s.set_last_seen(Some(ctx.update().update_id));
            println!("{} {} {:?}", s.count(), s.lang(), s.snapshot());
            Ok(())
        })
    });
    for i in 0..3 {
        chain.handle(Update::text(i, 42, 42, "hi")).await?;
    }
    println!(
        "{:?} writes={}",
        store.raw("42:42"),
        sessions.stats().writes()
    );
    Ok(())
}
