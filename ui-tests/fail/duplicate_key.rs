use typed_session::Session;

#[derive(Session)]
#[session(accessor = "profile", accessor = "me")]
struct Profile {
    #[session(rename = "n")]
    #[session(rename = "m")]
    count: u64,
}

fn main() {}
