use typed_session::Session;

#[derive(Session)]
#[derive(Default)]
struct Profile {
    #[default(1)]
    count: u64,
}

fn main() {}
