use typed_session::Session;

#[derive(Session)]
enum Step {
    Start,
    Done,
}

fn main() {}
