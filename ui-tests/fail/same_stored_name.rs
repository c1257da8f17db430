use typed_session::Session;

#[derive(Session)]
struct Profile {
    count: u64,
    #[session(rename = "count")]
    total: u64,
}

fn main() {}
