use typed_session::Session;

#[derive(Session)]
struct Profile<'a> {
    name: &'a str,
}

fn main() {}
