use typed_session::Session;

#[derive(Session)]
struct Todo {
    items: Vec<String>,
    clear: bool,
}

fn main() {}
