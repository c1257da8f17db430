use typed_session::Session;

#[derive(Session, Default)]
struct Profile {
    #[default(1)]
    count: u64,
}

fn main() {}
