//! "structs with named fields", "defaults", "attributes": every attribute, on a struct with visibility, docs and other derives.
use typed_session::telegram::Update;
use typed_session::schema::Schema;
use typed_session::{Chain, KeyStrategy, MemoryStore, Session, SessionMiddleware};

#[derive(Session, Clone, Debug, PartialEq)]
#[session(accessor = "profile", key = "user", ttl = "7d", renewal = "on_access", namespace = "profile_v1")]
pub struct Profile {
    /// How many messages.
    #[default(0)]
    pub count: u64,
    #[default(String::from("en"))]
    lang: String,
    #[session(rename = "seen")]
    last_seen: Option<i64>,
    #[session(skip)]
    #[default(vec![0u8; 4])]
    scratch: Vec<u8>,
    #[session(reset_on_error)]
    tags: Vec<String>,
}

#[derive(Session)]
#[session(ttl = 3600)]
struct Plain {
    r#type: String,
}

fn main() {
    let p = Profile::default();
    assert_eq!((p.count, p.lang.as_str(), p.scratch.len()), (0, "en", 4));
    assert_eq!(<Profile as Schema>::FIELDS.len(), 4);
    assert_eq!(<Profile as Schema>::NAMESPACE, "profile_v1");
    assert_eq!(<Profile as Schema>::FIELDS[2].name, "seen");
    assert_eq!(<Profile as Schema>::RENEWAL, typed_session::Renewal::OnAccess);
    assert_eq!(<Plain as Schema>::RENEWAL, typed_session::Renewal::OnWrite);
    let _ = Plain::default().r#type;

    let chain = Chain::new()
        .with(SessionMiddleware::<Profile, Update>::new(MemoryStore::new()))
        .with(SessionMiddleware::<Plain, Update>::builder(MemoryStore::new()).key(KeyStrategy::chat()).build())
        .handler(|ctx| {
            Box::pin(async move {
                let s = ctx.profile().await?;
                s.update_count(|c| *c += 1);
                s.set_lang("de".to_owned());
                s.with_tags(|t| t.len());
                s.reset_last_seen();
                s.set_scratch(vec![]);
                let _copy: Profile = s.snapshot();
                let plain = ctx.session().await?;
                plain.set_type("x");
                let _: String = plain.r#type();
                Ok(())
            })
        });
    let _ = chain;
}
