//! "attributes": a migration step must be a function from a `Migration` to a `Result`; the
//! error points at the step.
use typed_session::Session;

#[derive(Session)]
#[session(migrations = [Profile::upgrade])]
struct Profile {
    count: u64,
}

impl Profile {
    fn upgrade(count: u64) -> u64 {
        count
    }
}

fn main() {}
