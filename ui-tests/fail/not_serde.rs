use typed_session::Session;

#[derive(Default)]
struct Connection {
    open: bool,
}

#[derive(Session)]
struct Profile {
    count: u64,
    connection: Connection,
}

fn main() {}
