use typed_session::Session;

#[derive(Session)]
#[session(ttl = "10 minutes", key = "per_user")]
struct Profile {
    count: u64,
}

#[derive(Session)]
#[session(ttl = 0, accessor = "not a name")]
struct Other {
    count: u64,
}

fn main() {}
