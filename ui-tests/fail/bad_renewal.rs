//! "attributes": a renewal policy that does not exist is refused, naming the two that do.
use typed_session::Session;

#[derive(Session)]
#[session(ttl = "30d", renewal = "on_read")]
struct Profile {
    count: u64,
}

fn main() {}
