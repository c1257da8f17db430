use typed_session::Session;

#[derive(Session)]
struct Profile {
    #[session(rename = "@lease")]
    lease: u64,
}

fn main() {}
