use typed_session::Session;

#[derive(Session)]
#[session(property = "profile")]
struct Profile {
    #[session(renamed = "n")]
    count: u64,
    #[session(skip, accessor = "x")]
    scratch: u8,
}

fn main() {}
