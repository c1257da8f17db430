use typed_session::Session;

#[derive(Session)]
struct Profile {
    #[default]
    count: u64,
    #[default = 5]
    level: u8,
}

fn main() {}
