//! A namespace is the first part of every stored key, `"{namespace}:{key}"`: it cannot be
//! empty or hold the separator.
use typed_session::Session;

#[derive(Session)]
#[session(namespace = "v1:profile")]
struct Profile {
    count: u64,
}

#[derive(Session)]
#[session(namespace = "", accessor = "other")]
struct Other {
    count: u64,
}

fn main() {}
