//! Setters take the field's own type, `&str` for `String` fields, and still infer integer
//! literals for numeric fields.
use typed_session::Session;

#[derive(Session)]
struct Profile {
    #[default(0)]
    count: u64,
    #[default(String::from("en"))]
    lang: String,
    nick: Option<String>,
    seen: Option<i64>,
}

fn use_setters(profile: &ProfileHandle<'_>) {
    profile.set_count(5);
    profile.set_lang("de");
    profile.set_lang(String::from("fr"));
    profile.set_nick("ada");
    profile.set_nick(None);
    profile.set_seen(Some(1_700_000_000));
}

fn main() {
    let _ = use_setters;
}
