//! "Lazy load", "Dirty tracking", "Field-level patches": lazy load, no write on read, no write of unchanged or untouched fields, and
//! patches that name only the changed fields.

use crate::common;

use std::sync::Arc;

use common::{Counter, CounterAccess, ProbeStore, stored};
use typed_session::store::Patch;
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware, Store};

fn chain_with(
    probe: &Arc<ProbeStore>,
    body: fn(&common::CounterHandle<'_>),
) -> (Chain<Update>, SessionMiddleware<Counter, Update>) {
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(probe));
    let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
        Box::pin(async move {
            body(&ctx.session().await?);
            Ok(())
        })
    });
    (chain, sessions)
}

#[tokio::test]
async fn an_update_that_never_touches_its_session_makes_no_store_call() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::new(Arc::clone(&probe));
    let chain = Chain::new()
        .with(sessions.clone())
        .handler(|_ctx| Box::pin(async { Ok(()) }));

    for i in 0..10 {
        chain
            .run_update(Update::text(i, 7, 7, "hi"))
            .await
            .expect("ok");
    }

    assert_eq!(probe.calls(), 0);
    assert_eq!(sessions.live_sessions(), 0);
}

#[tokio::test]
async fn an_update_that_only_reads_writes_nothing() {
    let memory = common::seeded(&[("count", "5")]).await;
    let probe = ProbeStore::new(memory);
    let (chain, _) = chain_with(&probe, |s| {
        assert_eq!(s.count(), 5);
        assert_eq!(s.lang(), "en");
        s.with_note(|n| assert!(n.is_none()));
    });

    chain
        .run_update(Update::text(1, 7, 7, "?"))
        .await
        .expect("ok");

    assert_eq!(probe.loads(), 1);
    assert_eq!(probe.applies(), 0);
}

#[tokio::test]
async fn setting_a_field_to_its_current_value_writes_nothing() {
    let memory = common::seeded(&[("count", "5")]).await;
    let probe = ProbeStore::new(memory);
    let (chain, _) = chain_with(&probe, |s| {
        s.set_count(5);
        s.update_count(|c| *c += 0);
        s.set_lang("en".to_owned()); // the default, and nothing stored: reads back the same
    });

    chain
        .run_update(Update::text(1, 7, 7, "="))
        .await
        .expect("ok");

    assert_eq!(probe.applies(), 0);
}

#[tokio::test]
async fn an_untouched_default_is_never_written() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::new(memory.clone());
    let (chain, _) = chain_with(&probe, |s| s.set_note(Some("hello".into())));

    chain
        .run_update(Update::text(1, 7, 7, "note"))
        .await
        .expect("ok");

    let record = memory.raw("Counter:7:7").expect("written");
    assert_eq!(
        record.fields.keys().collect::<Vec<_>>(),
        ["note"],
        "only the changed field is stored"
    );
    assert_eq!(probe.patches()[0].set.len(), 1);
}

#[tokio::test]
async fn a_patch_names_only_the_changed_fields_and_leaves_the_others_in_the_store() {
    let memory = MemoryStore::new();
    memory
        .apply(
            "Counter:7:7",
            &Patch::new()
                .set_field("count", "1")
                .set_field("lang", "\"de\""),
        )
        .await
        .expect("seed");
    let probe = ProbeStore::new(memory.clone());
    let (chain, _) = chain_with(&probe, |s| s.update_count(|c| *c += 1));

    chain
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("ok");

    let patch = &probe.patches()[0];
    assert_eq!(patch.set.keys().collect::<Vec<_>>(), ["count"]);
    assert!(patch.remove.is_empty());
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(2));
    assert_eq!(
        stored::<String>(&memory, "7:7", "lang").as_deref(),
        Some("de")
    );
}

#[tokio::test]
async fn a_concurrent_writer_of_another_field_is_not_overwritten() {
    let memory = MemoryStore::new();
    let probe = ProbeStore::gated(memory.clone());
    let (chain, _) = chain_with(&probe, |s| s.update_count(|c| *c += 1));

    let update = tokio::spawn(async move { chain.run_update(Update::text(1, 7, 7, "+1")).await });
    probe.apply_started.notified().await;
    // Between our load and our write, another process sets `lang`.
    memory
        .apply("Counter:7:7", &Patch::new().set_field("lang", "\"fr\""))
        .await
        .expect("other writer");
    probe.release_applies(1);
    update.await.expect("no panic").expect("ok");

    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(1));
    assert_eq!(
        stored::<String>(&memory, "7:7", "lang").as_deref(),
        Some("fr")
    );
}

#[tokio::test]
async fn reset_removes_the_field_from_the_store() {
    let memory = MemoryStore::new();
    memory
        .apply(
            "Counter:7:7",
            &Patch::new()
                .set_field("count", "3")
                .set_field("lang", "\"de\""),
        )
        .await
        .expect("seed");
    let probe = ProbeStore::new(memory.clone());
    let (chain, _) = chain_with(&probe, |s| {
        s.reset_lang();
        assert_eq!(s.lang(), "en");
    });

    chain
        .run_update(Update::text(1, 7, 7, "reset"))
        .await
        .expect("ok");

    assert_eq!(probe.patches()[0].remove, ["lang"]);
    assert_eq!(stored::<String>(&memory, "7:7", "lang"), None);
    assert_eq!(stored::<u64>(&memory, "7:7", "count"), Some(3));
}

#[derive(Session)]
#[session(accessor = "wide")]
struct Wide {
    f00: u32,
    f01: u32,
    f02: u32,
    f03: u32,
    f04: u32,
    f05: u32,
    f06: u32,
    f07: u32,
    f08: u32,
    f09: u32,
    f10: u32,
    f11: u32,
    f12: u32,
    f13: u32,
    f14: u32,
    f15: u32,
    f16: u32,
    f17: u32,
    f18: u32,
    #[default(String::from("a fairly long value that a whole-object write would repeat"))]
    f19: String,
}

#[tokio::test]
async fn changing_one_field_of_twenty_writes_only_that_field() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Wide, Update>::new(Arc::clone(&probe));
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.wide().await?.update_f07(|v| *v += 1);
            Ok(())
        })
    });

    chain
        .run_update(Update::text(1, 7, 7, "+1"))
        .await
        .expect("ok");

    let patches = probe.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].set.len(), 1);
    assert_eq!(
        sessions.stats().bytes_written(),
        "f07".len() as u64 + "1".len() as u64
    );
}

#[tokio::test]
async fn an_update_changing_several_fields_costs_one_load_and_one_patch() {
    // "one round trip" and "Persist after the chain" at the middleware: whatever the update changes, one read and one
    // write reach the store (each store then makes those one round trip).
    let probe = ProbeStore::new(common::seeded(&[("count", "5")]).await);
    let (chain, _) = chain_with(&probe, |s| {
        s.update_count(|c| *c += 1);
        s.set_lang("de".to_owned());
        s.set_note(Some("hi".to_owned()));
        s.reset_count();
    });

    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("ok");

    assert_eq!((probe.loads(), probe.applies(), probe.deletes()), (1, 1, 0));
    let patch = &probe.patches()[0];
    assert_eq!(patch.set.keys().collect::<Vec<_>>(), ["lang", "note"]);
    assert_eq!(patch.remove, ["count"]);
}

#[derive(Session)]
#[session(accessor = "scores")]
struct Scores {
    by_player: std::collections::HashMap<String, u32>,
}

/// Twenty players, in a fresh `HashMap` each time: its iteration order (and so its JSON
/// text) differs from one map to the next, its content does not.
fn twenty_players() -> std::collections::HashMap<String, u32> {
    (0..20).map(|i| (format!("player{i}"), i)).collect()
}

/// An equal map, set again or changed by an `update_*` that leaves it equal, is not written:
/// "unchanged" compares content, not the text order of a `HashMap`.
#[tokio::test]
async fn an_equal_hash_map_is_not_written_again() {
    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Scores, Update>::new(Arc::clone(&probe));
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let scores = ctx.scores().await?;
            match ctx.update().text_of() {
                Some("set") => scores.set_by_player(twenty_players()),
                _ => scores.update_by_player(|map| {
                    *map = twenty_players();
                }),
            }
            Ok(())
        })
    });

    chain
        .run_update(Update::text(1, 7, 7, "set"))
        .await
        .expect("ok");
    assert_eq!(probe.applies(), 1, "the first save writes the map");
    for (i, text) in ["set", "update", "set", "update"].into_iter().enumerate() {
        chain
            .run_update(Update::text(2 + i as i64, 7, 7, text))
            .await
            .expect("ok");
    }

    assert_eq!(probe.applies(), 1, "equal maps are not written again");
    assert_eq!(sessions.stats().writes(), 1);
}
