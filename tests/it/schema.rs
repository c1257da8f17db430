//! "Schema evolution": schema evolution. Renamed fields keep their data, removed fields are ignored, missing
//! fields get their defaults, and undecodable values are errors naming key and field.

use crate::common;

use common::seeded;
use typed_session::telegram::Update;
use typed_session::{BoxError, Chain, MemoryStore, Session, SessionError, SessionMiddleware};

/// The second version of the `Counter` session type of the other tests (the one `seeded`
/// stores): the namespace keeps it reading what version 1 stored.
#[derive(Session, Clone, Debug, PartialEq)]
#[session(namespace = "Counter")]
struct V2 {
    /// Called `name` in version 1.
    #[session(rename = "name")]
    display_name: String,
    #[default(3)]
    level: u8,
    #[session(reset_on_error)]
    #[default(vec![1, 2])]
    favourites: Vec<u32>,
}

async fn load_v2(memory: &MemoryStore) -> Result<V2, BoxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = parking_lot::Mutex::new(Some(tx));
    let chain = Chain::new()
        .with(SessionMiddleware::<V2, Update>::new(memory.clone()))
        .handler(move |ctx| {
            let tx = tx.lock().take();
            Box::pin(async move {
                let snapshot = ctx.session().await?.snapshot();
                tx.expect("once").send(snapshot).expect("test alive");
                Ok(())
            })
        });
    chain.run_update(Update::text(1, 7, 7, "x")).await?;
    Ok(rx.await?)
}

#[tokio::test]
async fn a_field_renamed_in_code_still_reads_the_old_stored_name() {
    let memory = seeded(&[("name", "\"Ada\"")]).await;
    let v2 = load_v2(&memory).await.expect("loads");
    assert_eq!(v2.display_name, "Ada");
}

#[tokio::test]
async fn a_stored_field_that_no_longer_exists_is_ignored_and_a_missing_one_gets_its_default() {
    let memory = seeded(&[("name", "\"Ada\""), ("removed_in_v2", "{\"x\":1}")]).await;
    let v2 = load_v2(&memory).await.expect("loads");
    assert_eq!(
        v2,
        V2 {
            display_name: "Ada".into(),
            level: 3,
            favourites: vec![1, 2]
        }
    );
}

#[tokio::test]
async fn an_undecodable_stored_value_is_an_error_naming_key_and_field() {
    let memory = seeded(&[("level", "\"high\"")]).await;
    let error = load_v2(&memory).await.expect_err("level is not a u8");
    let error = error.downcast::<SessionError>().expect("a session error");
    assert!(
        matches!(*error, SessionError::Decode { field: "level", ref key, .. } if key == "7:7"),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("\"level\"") && message.contains("\"7:7\""),
        "{message}"
    );
    assert!(
        memory
            .raw("Counter:7:7")
            .is_some_and(|r| r["level"] == "\"high\""),
        "the stored value is kept"
    );
}

#[tokio::test]
async fn a_reset_on_error_field_falls_back_to_its_default() {
    let memory = seeded(&[("favourites", "\"not a list\""), ("level", "9")]).await;
    let v2 = load_v2(&memory).await.expect("loads");
    assert_eq!((v2.favourites, v2.level), (vec![1, 2], 9));
}
