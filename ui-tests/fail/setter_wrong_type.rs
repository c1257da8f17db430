//! A setter given a value of another type names the field's type and what it accepts.
use typed_session::Session;

#[derive(Session)]
struct Profile {
    #[default(0)]
    count: u64,
}

fn use_setter(profile: &ProfileHandle<'_>) {
    profile.set_count("five");
}

fn main() {
    let _ = use_setter;
}
