use typed_session::Session;

#[derive(Session)]
struct Profile {
    #[session(rename = "say \"hi\"")]
    greeting: String,
}

fn main() {}
