use typed_session::Session;

#[derive(Session)]
struct Counter(u64, String);

fn main() {}
