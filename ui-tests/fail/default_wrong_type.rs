use typed_session::Session;

#[derive(Session)]
struct Profile {
    #[default("zero")]
    count: u64,
    #[default(String::from("en"))]
    lang: String,
}

fn main() {}
