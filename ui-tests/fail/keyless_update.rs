//! "Keys" at compile time: the default key strategies need an update type that says who sent it
//! and where; other update types must name their key.
use typed_session::{MemoryStore, Session, SessionMiddleware};

struct RawUpdate {
    body: Vec<u8>,
}

#[derive(Session)]
struct Profile {
    count: u64,
}

fn main() {
    let _ = SessionMiddleware::<Profile, RawUpdate>::new(MemoryStore::new());
}
