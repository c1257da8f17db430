//! "The store contract": one conformance suite, written once and run against every store: missing keys, round
//! trips, field-level patches ("Field-level patches"), expiry ("expiry"), keys of any content ("keys of any content"), large values, many
//! fields, concurrent writers, and the middleware on top.
//!
//! Server-backed suites read `POSTGRES_URL`, `MYSQL_URL`, `REDIS_URL`, `REDIS_CLUSTER_URLS`
//! and `MONGODB_URL`. Without one, each of their tests
//! prints `SKIPPED <store>::<test>` and passes; with `TYPED_SESSION_REQUIRE_SERVERS=1` (set by
//! `.ci/run`) a missing URL fails instead.

use crate::common;

use common::unique;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use typed_session::store::{Patch, Record};
use typed_session::telegram::Update;
use typed_session::{Chain, Session, SessionMiddleware, Store};

fn patch<'a>(set: &[(&'a str, &str)], remove: &[&'a str], ttl: Option<Duration>) -> Patch<'a> {
    let patch = set
        .iter()
        .fold(Patch::new().with_ttl(ttl), |patch, (k, v)| {
            patch.set_field(k, *v)
        });
    remove.iter().fold(patch, |patch, k| patch.remove_field(k))
}

/// A record as JSON values, so stores that normalise JSON text compare equal.
fn values(record: Option<Record>) -> Option<HashMap<String, Value>> {
    record.map(|r| {
        r.into_iter()
            .map(|(k, v)| {
                let parsed = serde_json::from_str(&v)
                    .unwrap_or_else(|e| panic!("field {k} holds {v:?}: {e}"));
                (k, parsed)
            })
            .collect()
    })
}

fn expect(fields: &[(&str, Value)]) -> Option<HashMap<String, Value>> {
    Some(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
enum Mood {
    #[default]
    Calm,
    Busy {
        until: i64,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
struct Address {
    city: String,
    zip: Option<u32>,
}

/// Every kind of field type: the round trip through a store must give them back equal.
#[derive(Session, Clone, Debug, PartialEq)]
#[session(accessor = "everything")]
pub(crate) struct Everything {
    #[default(-1_000_000_000_123)]
    telegram_id: i64,
    /// The largest integer every store holds exactly (BSON has no unsigned 64-bit type).
    #[default(i64::MAX as u64)]
    big: u64,
    #[default(-0.125)]
    ratio: f64,
    #[default(true)]
    flag: bool,
    #[default(String::from("ünïcødé \"quoted\" \\ back\nslash 🙂"))]
    text: String,
    #[default(Some(vec![1, 2, 3]))]
    list: Option<Vec<u16>>,
    nothing: Option<String>,
    #[default(HashMap::from([("k".to_owned(), 1.5)]))]
    map: HashMap<String, f32>,
    #[default(Address { city: "Zürich".into(), zip: Some(8001) })]
    address: Address,
    #[default(Mood::Busy { until: 42 })]
    mood: Mood,
    #[default((7, 'x'))]
    pair: (u8, char),
}

/// A session per user (for erasure across types).
#[derive(Session)]
#[session(accessor = "per_user", key = "user")]
struct PerUser {
    lang: String,
}

/// A session per chat, shared by its members (for erasure across types).
#[derive(Session)]
#[session(accessor = "per_chat", key = "chat")]
struct PerChat {
    topic: String,
}

/// Two fields that two "processes" increment independently.
#[derive(Session)]
#[session(accessor = "pair")]
struct Pair {
    a: u64,
    b: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
enum Lang {
    #[default]
    En,
    De,
}

/// A session type at version 2: version 0 stored `lang` as a code, version 1 `timeout` in
/// seconds.
#[derive(Session)]
#[session(accessor = "versioned", migrations = [Versioned::lang_as_enum, Versioned::timeout_in_millis])]
struct Versioned {
    lang: Lang,
    /// Milliseconds.
    timeout: u64,
    note: Option<String>,
}

impl Versioned {
    fn lang_as_enum(
        record: &mut typed_session::schema::Migration<'_>,
    ) -> Result<(), typed_session::schema::MigrationError> {
        record.try_map("lang", |code: String| match code.as_str() {
            "en" => Ok(Lang::En),
            "de" => Ok(Lang::De),
            other => Err(format!("unknown language code {other:?}")),
        })
    }

    fn timeout_in_millis(
        record: &mut typed_session::schema::Migration<'_>,
    ) -> Result<(), typed_session::schema::MigrationError> {
        record.map("timeout", |seconds: u64| seconds * 1000)
    }
}

/// Reads the `Versioned` session of `user` and returns it, or the error.
async fn read_versioned(
    sessions: &SessionMiddleware<Versioned, Update>,
    update: i64,
    user: i64,
) -> Result<(Lang, u64, Option<String>), typed_session::BoxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let read = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let tx = tx.lock().expect("not poisoned").take();
        Box::pin(async move {
            let session = ctx.versioned().await?;
            if let Some(tx) = tx {
                let _ = tx.send((session.lang(), session.timeout(), session.note()));
            }
            Ok(())
        })
    });
    read.run_update(Update::text(update, user, user, "read"))
        .await?;
    Ok(rx.await.expect("the handler ran"))
}

/// Runs the suite against one backend: `$make(test)` gives two handles on one store, or `None`
/// (and says why) when the store's server has no URL. Every test of [`suite`] is listed once,
/// here; one left out is dead code, which the lints refuse.
macro_rules! conformance {
    ($backend:ident, $make:path) => {
        mod $backend {
            use super::*;

            conformance!(@tests $backend, $make, tokio::test, [
                a_missing_key_loads_nothing,
                a_patch_that_only_renews_creates_nothing_and_brings_nothing_back,
                reads_renew_the_expiry_once_per_burst_on_access_and_never_on_write,
                an_old_record_is_migrated_on_load_and_written_back_once_field_by_field,
                a_record_the_versioned_type_wrote_is_not_migrated_and_a_failed_step_names_key_field_and_version,
                every_write_of_a_field_adds_one_to_its_version_and_a_removal_keeps_it,
                a_patch_of_many_expected_fields_moves_each_version_once,
                every_rust_string_round_trips_nul_included,
                a_patch_of_more_fields_than_the_limit_is_refused_whole_in_every_store,
                a_writer_is_recorded_under_a_name_the_patch_does_not_write,
                a_patch_records_the_update_that_wrote_each_field,
                a_patch_based_on_an_older_version_is_refused_and_writes_nothing,
                a_field_a_patch_only_expects_keeps_its_value_and_version,
                a_patch_expecting_a_field_of_a_missing_record_is_refused,
                of_two_writers_from_the_same_version_exactly_one_wins,
                delete_forgets_the_versions,
                a_patch_sets_and_removes_fields_and_leaves_the_others,
                json_values_of_every_kind_round_trip,
                delete_removes_the_record_and_deleting_a_missing_one_is_fine,
                keys_of_any_content_and_length_are_kept_apart,
                a_one_mib_value_round_trips,
                two_hundred_fields_round_trip,
                keys_lists_every_key_of_a_prefix_in_pages_and_nothing_else,
                a_walk_lists_every_key_that_exists_throughout_while_others_come_and_go,
                erase_user_deletes_every_session_of_the_user_and_no_one_elses,
                an_update_running_across_an_erasure_brings_nothing_back,
                a_record_expires_and_a_write_after_expiry_starts_empty,
                concurrent_patches_of_different_fields_from_two_instances_all_land,
                a_field_another_connection_writes_between_our_load_and_save_survives,
                every_supported_field_type_round_trips_through_the_middleware,
                an_unchanged_value_is_not_rewritten_after_a_reload,
                across_processes_one_update_per_key_runs_at_a_time,
                across_processes_a_lease_taken_over_refuses_the_old_holders_save,
                across_processes_an_expired_lease_is_taken_over_and_a_live_one_waited_for,
                across_processes_a_kept_lease_spares_the_load_and_the_claim_and_others_wait_for_it,
                across_processes_a_kept_lease_is_claimed_again_by_the_patch_after_a_clear,
                across_processes_a_kept_lease_taken_over_refuses_the_next_update_without_a_load,
                across_processes_a_read_that_fails_while_waiting_for_the_lease_is_read_again,
            ]);
            conformance!(@tests $backend, $make, tokio::test(flavor = "multi_thread", worker_threads = 2), [
                two_processes_incrementing_different_fields_of_one_key_both_end_exact,
            ]);
        }
    };
    (@tests $backend:ident, $make:path, $runtime:meta, [$($test:ident,)*]) => {
        $(
            #[$runtime]
            async fn $test() {
                if let Some((one, two)) = $make(stringify!($test)).await {
                    suite::$test(Stores { name: stringify!($backend), one, two }).await;
                }
            }
        )*
    };
}

/// Two handles on one store, as two processes hold them (one handle twice where the store lives
/// in the process), and the backend's name.
struct Stores<S> {
    name: &'static str,
    one: S,
    two: S,
}

/// The tests, each generic over the store.
mod suite {
    use super::*;

    pub(crate) async fn a_missing_key_loads_nothing<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        assert_eq!(store.load(&unique("missing")).await.expect("load"), None);
    }

    /// "The store contract", expiry: a renewal touches a live record only.
    pub(crate) async fn a_patch_that_only_renews_creates_nothing_and_brings_nothing_back<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let renew = Patch::new().with_ttl(Some(Duration::from_secs(600)));
        assert!(renew.only_renews());
        let (missing, deleted, live) = (
            unique("renew_missing"),
            unique("renew_deleted"),
            unique("renew_live"),
        );
        store.apply(&missing, &renew).await.expect("renew");
        assert_eq!(
            store.load(&missing).await.expect("load"),
            None,
            "not created"
        );
        store_apply(&store, &deleted, "a").await;
        store.delete(&deleted).await.expect("delete");
        store.apply(&deleted, &renew).await.expect("renew");
        assert_eq!(
            store.load(&deleted).await.expect("load"),
            None,
            "not brought back"
        );
        store
            .apply(
                &live,
                &patch(&[("a", "1")], &[], Some(Duration::from_secs(60))),
            )
            .await
            .expect("apply");
        store.apply(&live, &renew).await.expect("renew");
        let record = store.load(&live).await.expect("load").expect("still there");
        assert_eq!(
            (record.get("a"), record.version("a"), record.len()),
            (Some("1"), 1, 1),
            "fields untouched"
        );
    }

    /// "Expiry": reads renew under `Renewal::OnAccess`, coalesced; never by default.
    pub(crate) async fn reads_renew_the_expiry_once_per_burst_on_access_and_never_on_write<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        for renewal in [
            typed_session::Renewal::OnWrite,
            typed_session::Renewal::OnAccess,
        ] {
            let user = new_user();
            store
                .apply(
                    &format!("Pair:{user}:{user}"),
                    &patch(&[("a", "7")], &[], Some(Duration::from_secs(60))),
                )
                .await
                .expect("apply");
            let sessions = SessionMiddleware::<Pair, Update>::builder(store.clone())
                .ttl(Some(Duration::from_secs(600)))
                .renewal(renewal)
                .build();
            let read = Chain::new().with(sessions.clone()).handler(|ctx| {
                Box::pin(async move {
                    assert_eq!(ctx.pair().await?.a(), 7);
                    Ok(())
                })
            });
            // A burst of 20 concurrent reads, then 5 one after another.
            let mut burst = tokio::task::JoinSet::new();
            for i in 0..20 {
                let read = read.clone();
                burst.spawn(
                    async move { read.run_update(Update::text(i, user, user, "read")).await },
                );
            }
            while let Some(result) = burst.join_next().await {
                result.expect("no panic").expect("read");
            }
            for i in 20..25 {
                read.run_update(Update::text(i, user, user, "read"))
                    .await
                    .expect("read");
            }
            let expected = if renewal == typed_session::Renewal::OnAccess {
                1
            } else {
                0
            };
            assert_eq!(sessions.stats().renewals(), expected, "{renewal:?}");
            assert_eq!(
                sessions.stats().writes(),
                0,
                "{renewal:?}: reads write no field"
            );
            let record = store
                .load(&format!("Pair:{user}:{user}"))
                .await
                .expect("load")
                .expect("there");
            assert_eq!(
                (record.get("a"), record.version("a")),
                (Some("7"), 1),
                "{renewal:?}"
            );
        }
    }

    /// "Schema evolution": a record of an older version is migrated as it is read, and
    /// written back once, field by field.
    pub(crate) async fn an_old_record_is_migrated_on_load_and_written_back_once_field_by_field<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Versioned:{user}:{user}");
        // Version 0 (no version stored): a language code, seconds, and a field no step touches.
        store
            .apply(
                &key,
                &patch(
                    &[("lang", "\"de\""), ("timeout", "30"), ("note", "\"hi\"")],
                    &[],
                    None,
                ),
            )
            .await
            .expect("apply");
        let sessions = SessionMiddleware::<Versioned, Update>::new(store.clone());

        let read = read_versioned(&sessions, 1, user).await.expect("migrated");
        assert_eq!(read, (Lang::De, 30_000, Some("hi".to_owned())));
        assert_eq!(sessions.stats().writes(), 1, "written back with the update");
        let record = store.load(&key).await.expect("load").expect("there");
        let value = |field: &str| {
            record
                .get(field)
                .map(|raw| serde_json::from_str::<Value>(raw).expect("JSON"))
        };
        assert_eq!(
            (value("lang"), value("timeout"), value("@version")),
            (
                Some(Value::from("De")),
                Some(Value::from(30_000)),
                Some(Value::from(2))
            )
        );
        assert_eq!(
            (
                record.version("lang"),
                record.version("timeout"),
                record.version("note")
            ),
            (2, 2, 1),
            "only the migrated fields were written"
        );

        assert_eq!(
            read_versioned(&sessions, 2, user).await.expect("read"),
            (Lang::De, 30_000, Some("hi".to_owned()))
        );
        let fresh = SessionMiddleware::<Versioned, Update>::new(store.clone());
        assert_eq!(
            read_versioned(&fresh, 3, user).await.expect("read"),
            (Lang::De, 30_000, Some("hi".to_owned())),
            "not migrated twice"
        );
        assert_eq!(
            sessions.stats().writes() + fresh.stats().writes(),
            1,
            "written back once"
        );
    }

    /// "Schema evolution": new records carry the version; a failing step is an error
    /// naming key, field and version, and writes nothing.
    pub(crate) async fn a_record_the_versioned_type_wrote_is_not_migrated_and_a_failed_step_names_key_field_and_version<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let (new, bad) = (new_user(), new_user());
        let sessions = SessionMiddleware::<Versioned, Update>::new(store.clone());
        let write = Chain::new().with(sessions.clone()).handler(|ctx| {
            Box::pin(async move {
                ctx.versioned().await?.set_timeout(5);
                Ok(())
            })
        });
        write
            .run_update(Update::text(1, new, new, "set"))
            .await
            .expect("write");
        let fresh = SessionMiddleware::<Versioned, Update>::new(store.clone());
        assert_eq!(
            read_versioned(&fresh, 2, new).await.expect("read").1,
            5,
            "a new record carries the version: 5 ms stays 5 ms"
        );

        let key = format!("Versioned:{bad}:{bad}");
        store
            .apply(&key, &patch(&[("lang", "\"xx\"")], &[], None))
            .await
            .expect("apply");
        let error = read_versioned(&fresh, 3, bad)
            .await
            .expect_err("an unknown code");
        match error.downcast_ref::<typed_session::SessionError>() {
            Some(typed_session::SessionError::Migrate {
                key: k,
                source,
                version: 0,
                ..
            }) => {
                // The error names the key as the key strategy made it, without the namespace.
                assert_eq!(
                    (k.as_str(), source.field()),
                    (format!("{bad}:{bad}").as_str(), "lang")
                );
            }
            _ => panic!("expected a Migrate error: {error}"),
        }
        assert!(
            error.to_string().contains("unknown language code \"xx\""),
            "{error}"
        );
        let record = store.load(&key).await.expect("load").expect("there");
        assert_eq!(
            (record.get("lang"), record.get("@version")),
            (Some("\"xx\""), None),
            "nothing written"
        );
    }

    pub(crate) async fn every_write_of_a_field_adds_one_to_its_version_and_a_removal_keeps_it<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("versions");
        store
            .apply(&key, &patch(&[("a", "1"), ("b", "2")], &[], None))
            .await
            .expect("apply");
        store
            .apply(
                &key,
                &patch(&[("a", "3")], &[], None).expect_version("a", 1),
            )
            .await
            .expect("apply");
        store
            .apply(&key, &patch(&[], &["b"], None).expect_version("b", 1))
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(["a", "b", "c"].map(|f| record.version(f)), [2, 2, 0]);
        assert_eq!((record.get("a"), record.get("b")), (Some("3"), None));
        // A write with no expected version counts too, beside one with an expectation.
        store
            .apply(
                &key,
                &patch(&[("a", "5"), ("c", "6")], &[], None).expect_version("c", 0),
            )
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(["a", "b", "c"].map(|f| record.version(f)), [3, 2, 1]);
        assert_eq!((record.get("a"), record.get("c")), (Some("5"), Some("6")));
        // And a removal with no expected version.
        store
            .apply(&key, &patch(&[], &["a"], None))
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(["a", "b", "c"].map(|f| record.version(f)), [4, 2, 1]);
        assert_eq!((record.get("a"), record.get("c")), (None, Some("6")));
    }

    /// A patch that expects and writes many fields (as a session of many fields saves after
    /// a reload) is checked and versioned field by field like a small one: every field one
    /// version on, and one stale expectation among them refuses the whole patch.
    pub(crate) async fn a_patch_of_many_expected_fields_moves_each_version_once<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("many");
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let all = |value: &str, version: u64| {
            names.iter().fold(Patch::new(), |patch, name| {
                patch
                    .set_field(name, value.to_owned())
                    .expect_version(name, version)
            })
        };
        store.apply(&key, &all("1", 0)).await.expect("created");
        // Half set, half removed, each at the version the first patch gave it.
        let mut patch = Patch::new();
        for (i, name) in names.iter().enumerate() {
            patch = match i % 2 {
                0 => patch.set_field(name, "2"),
                _ => patch.remove_field(name),
            }
            .expect_version(name, 1);
        }
        store.apply(&key, &patch).await.expect("applied");
        let record = store.load(&key).await.expect("load").expect("exists");
        for (i, name) in names.iter().enumerate() {
            let value = (i % 2 == 0).then_some("2");
            assert_eq!(
                (record.get(name), record.version(name)),
                (value, 2),
                "{name}"
            );
        }
        // One expectation behind (f39 is at 2): nothing of the patch is written.
        let refused = store
            .apply(&key, &all("3", 2).expect_version("f39", 1))
            .await;
        assert!(
            matches!(&refused, Err(typed_session::StoreError::Conflict { fields, .. }) if fields == &["f39".to_owned()]),
            "{refused:?}"
        );
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!((record.get("f0"), record.version("f0")), (Some("2"), 2));
        store.apply(&key, &all("3", 2)).await.expect("applied");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert!(
            names
                .iter()
                .all(|name| record.get(name) == Some("3") && record.version(name) == 3),
            "{record:?}"
        );
    }

    pub(crate) async fn every_rust_string_round_trips_nul_included<S: Store + Clone>(
        Stores { one, .. }: Stores<S>,
    ) {
        let user = new_user();
        let sessions = SessionMiddleware::<Everything, Update>::new(one.clone());
        let texts = [
            "a\0b",
            "\0",
            "tab\tnew\nline\u{1}\u{7f}",
            "émoji 🦀 \u{fffd}",
            "{\"@json\":\"x\"}",
        ];
        for (i, text) in texts.iter().enumerate() {
            let text = text.to_string();
            let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
                let text = text.clone();
                Box::pin(async move {
                    ctx.everything().await?.set_nothing(Some(text));
                    Ok(())
                })
            });
            chain
                .run_update(Update::text(i as i64 + 1, user, user, "x"))
                .await
                .expect("saved");
            let (tx, rx) = tokio::sync::oneshot::channel();
            let tx = std::sync::Mutex::new(Some(tx));
            let read = Chain::new()
                .with(SessionMiddleware::<Everything, Update>::new(one.clone()))
                .handler(move |ctx| {
                    let tx = tx.lock().expect("not poisoned").take();
                    Box::pin(async move {
                        let value = ctx.everything().await?.nothing();
                        if let Some(tx) = tx {
                            let _ = tx.send(value);
                        }
                        Ok(())
                    })
                });
            read.run_update(Update::text(100 + i as i64, user, user, "r"))
                .await
                .expect("read");
            assert_eq!(rx.await.expect("read ran").as_deref(), Some(texts[i]));
        }
    }

    pub(crate) async fn a_patch_of_more_fields_than_the_limit_is_refused_whole_in_every_store<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let limit = typed_session::store::MAX_PATCH_FIELDS;
        let names: Vec<String> = (0..=limit).map(|i| format!("f{i}")).collect();
        let (key, fits) = (unique("limit"), unique("limit"));
        let too_many = names.iter().fold(Patch::new(), |p, n| p.set_field(n, "1"));
        let error = store.apply(&key, &too_many).await.expect_err("refused");
        assert!(
            matches!(error, typed_session::StoreError::Config { .. }),
            "{error}"
        );
        assert_eq!(
            store.load(&key).await.expect("load"),
            None,
            "nothing written"
        );
        let at_limit = names[..limit]
            .iter()
            .fold(Patch::new(), |p, n| p.set_field(n, "1"));
        store
            .apply(&fits, &at_limit)
            .await
            .expect("the limit itself fits");
        assert_eq!(
            store
                .load(&fits)
                .await
                .expect("load")
                .expect("stored")
                .len(),
            limit
        );
    }

    pub(crate) async fn a_writer_is_recorded_under_a_name_the_patch_does_not_write<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("writer_only");
        store
            .apply(
                &key,
                &patch(&[("a", "1")], &[], None)
                    .written_by("a", 7)
                    .written_by("@0", 7),
            )
            .await
            .expect("apply");
        store
            .apply(
                &key,
                &patch(&[("a", "2")], &[], None)
                    .written_by("a", 8)
                    .written_by("@1", 8),
            )
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            (record.writers.get("@0"), record.writers.get("@1")),
            (Some(&7), Some(&8))
        );
        assert_eq!(record.get("@0"), None, "a writer alone is no field");
        store
            .apply(&key, &patch(&[("a", "3")], &[], None).written_by("@0", 9))
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.writers.get("@0"), Some(&9), "overwritten");
    }

    pub(crate) async fn a_patch_records_the_update_that_wrote_each_field<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("writers");
        store
            .apply(
                &key,
                &patch(&[("a", "1"), ("b", "2")], &[], None).written_by("a", 7),
            )
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            (record.writers.get("a"), record.writers.get("b")),
            (Some(&7), None)
        );
        store
            .apply(
                &key,
                &patch(&[("a", "3"), ("b", "4")], &[], None).written_by("a", 9),
            )
            .await
            .expect("apply");
        store
            .apply(&key, &patch(&[], &["b"], None).written_by("b", 11))
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            (record.writers.get("a"), record.writers.get("b")),
            (Some(&9), Some(&11))
        );
        // A write without one keeps the writer.
        store
            .apply(&key, &patch(&[("a", "5")], &[], None))
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.writers.get("a"), Some(&9));
    }

    pub(crate) async fn a_patch_based_on_an_older_version_is_refused_and_writes_nothing<
        S: Store + Clone,
    >(
        Stores {
            one: ours,
            two: theirs,
            ..
        }: Stores<S>,
    ) {
        let key = unique("conflict");
        ours.apply(&key, &patch(&[("a", "1"), ("b", "1")], &[], None))
            .await
            .expect("apply");
        // Another writer saves `a` first, from the same version we read.
        theirs
            .apply(
                &key,
                &patch(&[("a", "5")], &[], None).expect_version("a", 1),
            )
            .await
            .expect("their write");
        let refused = ours
            .apply(
                &key,
                &patch(&[("a", "2"), ("b", "2")], &[], None)
                    .expect_version("a", 1)
                    .expect_version("b", 1),
            )
            .await
            .expect_err("a newer value of `a` is never overwritten");
        let current = match refused {
            typed_session::StoreError::Conflict {
                key: k,
                fields,
                current,
                ..
            } => {
                assert_eq!((k.as_str(), fields), (key.as_str(), vec!["a".to_owned()]));
                current
            }
            other => panic!("expected a conflict, got {other}"),
        };
        let record = ours.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            current.as_deref(),
            Some(&record),
            "the refusal carries the record as it is, read in the same call"
        );
        assert_eq!(
            (record.get("a"), record.get("b")),
            (Some("5"), Some("1")),
            "nothing of the refused patch landed"
        );
        assert_eq!((record.version("a"), record.version("b")), (2, 1));
        // Different fields never conflict.
        ours.apply(
            &key,
            &patch(&[("b", "2")], &[], None).expect_version("b", 1),
        )
        .await
        .expect("b is ours");
    }

    /// A patch may expect a field it does not write (one its update read): a condition
    /// only, that field's value and version stay as they are.
    pub(crate) async fn a_field_a_patch_only_expects_keeps_its_value_and_version<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("read_only");
        store
            .apply(&key, &patch(&[("a", "1"), ("b", "1")], &[], None))
            .await
            .expect("apply");
        store
            .apply(
                &key,
                &patch(&[("b", "2")], &[], None)
                    .expect_version("a", 1)
                    .expect_version("b", 1),
            )
            .await
            .expect("a is as read");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            (record.get("a"), record.version("a")),
            (Some("1"), 1),
            "only expected, not written"
        );
        assert_eq!((record.get("b"), record.version("b")), (Some("2"), 2));
        // Once `a` changed, the same kind of patch is refused, naming `a`.
        store
            .apply(&key, &patch(&[("a", "5")], &[], None))
            .await
            .expect("their write");
        let refused = store
            .apply(
                &key,
                &patch(&[("b", "3")], &[], None)
                    .expect_version("a", 1)
                    .expect_version("b", 2),
            )
            .await;
        assert!(
            matches!(&refused, Err(typed_session::StoreError::Conflict { fields, .. }) if fields == &["a".to_owned()]),
            "{refused:?}"
        );
        assert_eq!(
            store
                .load(&key)
                .await
                .expect("load")
                .expect("exists")
                .get("b"),
            Some("2")
        );
    }

    pub(crate) async fn a_patch_expecting_a_field_of_a_missing_record_is_refused<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("gone");
        let refused = store
            .apply(
                &key,
                &patch(&[("a", "1")], &[], None).expect_version("a", 3),
            )
            .await;
        match refused {
            Err(typed_session::StoreError::Conflict { current, .. }) => {
                assert_eq!(
                    current.as_deref(),
                    Some(&typed_session::store::Record::default()),
                    "no record reads as an empty one"
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(
            store.load(&key).await.expect("load"),
            None,
            "nothing created"
        );
        // Expecting a field never written creates the record.
        store
            .apply(
                &key,
                &patch(&[("a", "1")], &[], None).expect_version("a", 0),
            )
            .await
            .expect("created");
        assert_eq!(
            store
                .load(&key)
                .await
                .expect("load")
                .expect("exists")
                .version("a"),
            1
        );
    }

    pub(crate) async fn of_two_writers_from_the_same_version_exactly_one_wins<S: Store + Clone>(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let key = unique("race");
        one.apply(&key, &patch(&[("n", "0")], &[], None))
            .await
            .expect("seed");
        let first = patch(&[("n", "1")], &[], None).expect_version("n", 1);
        let second = patch(&[("n", "2")], &[], None).expect_version("n", 1);
        let (a, b) = tokio::join!(one.apply(&key, &first), two.apply(&key, &second));
        assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
        let record = one.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.version("n"), 2);
        assert_eq!(record.get("n"), Some(if a.is_ok() { "1" } else { "2" }));
    }

    pub(crate) async fn delete_forgets_the_versions<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("forget");
        store
            .apply(&key, &patch(&[("a", "1")], &[], None))
            .await
            .expect("apply");
        store.delete(&key).await.expect("delete");
        store
            .apply(
                &key,
                &patch(&[("a", "2")], &[], None).expect_version("a", 0),
            )
            .await
            .expect("a fresh record");
        assert_eq!(
            store
                .load(&key)
                .await
                .expect("load")
                .expect("exists")
                .version("a"),
            1
        );
    }

    pub(crate) async fn a_patch_sets_and_removes_fields_and_leaves_the_others<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("patch");
        store
            .apply(
                &key,
                &patch(&[("a", "1"), ("b", "\"two\""), ("c", "[3]")], &[], None),
            )
            .await
            .expect("apply");
        store
            .apply(
                &key,
                &patch(&[("a", "10"), ("d", "{\"x\":null}")], &["b"], None),
            )
            .await
            .expect("apply");
        assert_eq!(
            values(store.load(&key).await.expect("load")),
            expect(&[
                ("a", 10.into()),
                ("c", serde_json::json!([3])),
                ("d", serde_json::json!({"x": null}))
            ])
        );
    }

    pub(crate) async fn json_values_of_every_kind_round_trip<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("kinds");
        let fields = [
            ("neg", "-9223372036854775808"),
            ("max", "9223372036854775807"),
            ("past_f64", "9007199254740993"),
            ("float", "-0.125"),
            ("t", "true"),
            ("null", "null"),
            ("text", "\"it's \\\"quoted\\\" 🙂 \\\\ \\n\""),
            ("list", "[1,[2,{\"three\":3}]]"),
            ("empty", "{}"),
        ];
        store
            .apply(&key, &patch(&fields, &[], None))
            .await
            .expect("apply");
        let expected: Vec<_> = fields
            .iter()
            .map(|(k, v)| (*k, serde_json::from_str::<Value>(v).expect("json")))
            .collect();
        assert_eq!(
            values(store.load(&key).await.expect("load")),
            expect(&expected)
        );
    }

    pub(crate) async fn delete_removes_the_record_and_deleting_a_missing_one_is_fine<
        S: Store + Clone,
    >(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("delete");
        store
            .apply(&key, &patch(&[("a", "1")], &[], None))
            .await
            .expect("apply");
        store.delete(&key).await.expect("delete");
        assert_eq!(store.load(&key).await.expect("load"), None);
        store.delete(&key).await.expect("delete again");
    }

    pub(crate) async fn keys_of_any_content_and_length_are_kept_apart<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let base = unique("keys");
        let keys = [
            format!("{base}:-1001234567890:-1001234567890"),
            format!("{base}:ключ 🙂"),
            format!("{base}:'; DROP TABLE typed_sessions; --\"`\\"),
            format!("{base}:{}", "k".repeat(1024)),
            format!("{base}:{}", "é".repeat(1024)),
            format!("{base}:\0nul"),
        ];
        for (i, key) in keys.iter().enumerate() {
            let n = i.to_string();
            store
                .apply(key, &patch(&[("n", n.as_str())], &[], None))
                .await
                .expect("apply");
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                values(store.load(key).await.expect("load")),
                expect(&[("n", i.into())]),
                "key #{i}"
            );
        }
    }

    pub(crate) async fn a_one_mib_value_round_trips<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("large");
        let big = serde_json::to_string(&"x".repeat(1 << 20)).expect("json");
        store
            .apply(
                &key,
                &patch(&[("big", big.as_str()), ("small", "1")], &[], None),
            )
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            serde_json::from_str::<String>(&record["big"])
                .expect("a string")
                .len(),
            1 << 20
        );
    }

    pub(crate) async fn two_hundred_fields_round_trip<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let key = unique("wide");
        let names: Vec<String> = (0..200).map(|i| format!("field_{i:03}")).collect();
        let values_: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let fields: Vec<(&str, &str)> = names
            .iter()
            .zip(&values_)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        store
            .apply(&key, &patch(&fields, &[], None))
            .await
            .expect("apply");
        let record = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.len(), 200);
        assert_eq!(record["field_199"], "199");
    }

    /// "The store contract", listing: every key of the prefix once, in pages, nothing
    /// outside it; a cursor read back from its text goes on in another connection.
    pub(crate) async fn keys_lists_every_key_of_a_prefix_in_pages_and_nothing_else<
        S: Store + Clone,
    >(
        Stores { one, two, name }: Stores<S>,
    ) {
        let base = unique("list");
        let prefix = format!("{base}:");
        // Characters a LIKE pattern or a glob would read as wildcards, NUL and non-ASCII.
        let mut inside: Vec<String> = (0..23).map(|i| format!("{prefix}{i}")).collect();
        for odd in ["%", "_", "*", "?", "[x]", "\\", "!", "a b ", "\0", "ü🙂"] {
            inside.push(format!("{prefix}{odd}"));
        }
        let outside = [
            base.clone(),
            format!("{base};"),
            format!("{base}0:1"),
            format!("{}:x", &base[..base.len() - 1]),
        ];
        for key in inside.iter().chain(&outside) {
            store_apply(&one, key, "a").await;
        }
        // Redis's SCAN walks the hash table 100 slots a call: on a database this small it
        // hands back every key in one call, and the walk would end in one page. Other keys
        // outside the prefix make the table larger than one call.
        let filler: Vec<String> = if name.starts_with("redis") {
            (0..300).map(|i| format!("{base}-filler:{i}")).collect()
        } else {
            Vec::new()
        };
        for key in &filler {
            store_apply(&one, key, "a").await;
        }
        let deleted = format!("{prefix}deleted");
        store_apply(&one, &deleted, "a").await;
        one.delete(&deleted).await.expect("delete");
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            // Every other page through the other connection, the cursor as text.
            let store: &dyn Store = if pages % 2 == 0 { &one } else { &two };
            let page = store.keys(&prefix, cursor.as_ref(), 7).await.expect("list");
            // Redis's SCAN hands back whole batches (up to 100 slots each); the ordered
            // stores never pass the limit.
            let most = if name.starts_with("redis") {
                7 + inside.len()
            } else {
                7
            };
            assert!(
                page.keys.len() <= most,
                "{} keys in a page of 7",
                page.keys.len()
            );
            seen.extend(page.keys);
            pages += 1;
            assert!(pages < 1_000, "the walk ends");
            match page.next {
                Some(next) => cursor = Some(typed_session::store::Cursor::new(next.to_string())),
                None => break,
            }
        }
        let seen: std::collections::BTreeSet<String> = seen.into_iter().collect();
        let inside: std::collections::BTreeSet<String> = inside.into_iter().collect();
        assert_eq!(
            seen, inside,
            "every key of the prefix, none outside it, none deleted"
        );
        assert!(pages >= 2, "more keys than a page: {pages} pages");
        for key in &filler {
            one.delete(key).await.expect("delete");
        }
        let none = one
            .keys(&format!("{base}-none:"), None, 10)
            .await
            .expect("list");
        assert!(none.keys.is_empty() && none.next.is_none(), "{none:?}");
    }

    /// "The store contract", listing under concurrent writes: a key that exists for the
    /// whole walk is listed, whatever is written and deleted between pages.
    pub(crate) async fn a_walk_lists_every_key_that_exists_throughout_while_others_come_and_go<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let prefix = format!("{}:", unique("walk"));
        let steady: Vec<String> = (0..60).map(|i| format!("{prefix}s{i:02}")).collect();
        for key in &steady {
            store_apply(&one, key, "a").await;
        }
        let (mut seen, mut cursor, mut round) = (std::collections::BTreeSet::new(), None, 0);
        loop {
            let page = one.keys(&prefix, cursor.as_ref(), 5).await.expect("list");
            seen.extend(page.keys);
            // Another writer adds keys before and after the cursor, and deletes some.
            for i in 0..4 {
                let key = format!("{prefix}{}{round:03}{i}", ["a", "m", "t", "z"][i]);
                store_apply(&two, &key, "a").await;
                if i % 2 == 0 {
                    two.delete(&key).await.expect("delete");
                }
            }
            round += 1;
            assert!(round < 1_000, "the walk ends");
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let missed: Vec<&String> = steady.iter().filter(|key| !seen.contains(*key)).collect();
        assert!(
            missed.is_empty(),
            "keys that existed throughout and were not listed: {missed:?}"
        );
    }

    /// "Erasure": every session of a user across types and chats, and no one else's; a
    /// second call deletes nothing.
    pub(crate) async fn erase_user_deletes_every_session_of_the_user_and_no_one_elses<
        S: Store + Clone,
    >(
        Stores { one, .. }: Stores<S>,
    ) {
        let user = new_user() * 10;
        // A neighbour whose id starts with the user's digits, and a group.
        let (other, group) = (user * 10 + 1, -user);
        let pairs = SessionMiddleware::<Pair, Update>::new(one.clone());
        let per_user = SessionMiddleware::<PerUser, Update>::new(one.clone());
        let per_chat = SessionMiddleware::<PerChat, Update>::new(one.clone());
        let chain = Chain::new()
            .with(pairs.clone())
            .with(per_user.clone())
            .with(per_chat.clone())
            .handler(|ctx| {
                Box::pin(async move {
                    ctx.pair().await?.update_a(|a| *a += 1);
                    ctx.per_user().await?.set_lang("de");
                    ctx.per_chat().await?.set_topic("rust");
                    Ok(())
                })
            });
        let mut id = 0;
        for (from, chat) in [(user, user), (user, group), (other, other), (other, group)] {
            id += 1;
            chain
                .run_update(Update::text(id, from, chat, "hi"))
                .await
                .expect("update");
        }
        // Listed per type, without the namespace.
        let mut listed = pairs
            .keys(&format!("{user}:"), None, 10)
            .await
            .expect("list")
            .keys;
        listed.sort();
        let mut chats = vec![format!("{user}:{user}"), format!("{user}:{group}")];
        chats.sort();
        assert_eq!(listed, chats);
        let erasure = typed_session::Erasure::new()
            .register(&pairs)
            .register(&per_user)
            .register(&per_chat);
        let erased = erasure.erase_user(user).await.expect("erase");
        let mut got: Vec<(&str, String)> = erased
            .sessions
            .iter()
            .map(|s| (s.session, s.key.clone()))
            .collect();
        got.sort();
        let mut want = vec![
            ("Pair", format!("{user}:{user}")),
            ("Pair", format!("{user}:{group}")),
            ("PerChat", format!("{user}")),
            ("PerUser", format!("{user}")),
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(erased.not_covered.is_empty());
        for key in [
            format!("Pair:{user}:{user}"),
            format!("Pair:{user}:{group}"),
            format!("PerUser:{user}"),
            format!("PerChat:{user}"),
        ] {
            assert_eq!(one.load(&key).await.expect("load"), None, "{key} erased");
        }
        for key in [
            format!("Pair:{other}:{other}"),
            format!("Pair:{other}:{group}"),
            format!("PerUser:{other}"),
            format!("PerChat:{group}"),
            format!("PerChat:{other}"),
        ] {
            assert!(one.load(&key).await.expect("load").is_some(), "{key} kept");
        }
        assert!(
            erasure.erase_user(user).await.expect("again").is_empty(),
            "idempotent"
        );
        assert_eq!(
            pairs.live_sessions() + per_user.live_sessions() + per_chat.live_sessions(),
            0
        );
    }

    /// "Erasure": an update of the user running across the erasure does not bring the
    /// erased values back, and the next update starts from defaults.
    pub(crate) async fn an_update_running_across_an_erasure_brings_nothing_back<
        S: Store + Clone,
    >(
        Stores { one, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let pairs = SessionMiddleware::<Pair, Update>::new(one.clone());
        let seed = Chain::new().with(pairs.clone()).handler(|ctx| {
            Box::pin(async move {
                let pair = ctx.pair().await?;
                pair.set_a(41);
                pair.set_b(7);
                Ok(())
            })
        });
        seed.run_update(Update::text(1, user, user, "seed"))
            .await
            .expect("seed");
        // An update that read the session, then waits while the user is erased, then
        // writes a value derived from what it read.
        let (read_tx, read_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let slots = std::sync::Arc::new(parking_lot::Mutex::new(Some((read_tx, go_rx))));
        let across = Chain::new().with(pairs.clone()).handler(move |ctx| {
            let slots = slots.lock().take();
            Box::pin(async move {
                let (read_tx, go_rx) = slots.expect("runs once");
                let pair = ctx.pair().await?;
                let a = pair.a();
                let _ = read_tx.send(a);
                let _ = go_rx.await;
                pair.set_a(a + 1);
                Ok(())
            })
        });
        let running =
            tokio::spawn(async move { across.run_update(Update::text(2, user, user, "+1")).await });
        assert_eq!(read_rx.await.expect("the update read"), 41);
        let erased = pairs.erase_user(user).await.expect("erase");
        assert_eq!(erased.sessions.len(), 1);
        assert_eq!(
            pairs.live_sessions(),
            1,
            "the running update still holds the live entry"
        );
        let read = |id: i64| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let tx = parking_lot::Mutex::new(Some(tx));
            let chain = Chain::new().with(pairs.clone()).handler(move |ctx| {
                let tx = tx.lock().take();
                Box::pin(async move {
                    let pair = ctx.pair().await?;
                    let _ = tx.expect("once").send((pair.a(), pair.b()));
                    Ok(())
                })
            });
            async move {
                chain
                    .run_update(Update::text(id, user, user, "read"))
                    .await
                    .expect("read");
                rx.await.expect("read ran")
            }
        };
        assert_eq!(
            read(3).await,
            (0, 0),
            "an update sharing the live entry sees the erasure"
        );
        let _ = go_tx.send(());
        let outcome = running.await.expect("no panic");
        let record = one.load(&key).await.expect("load");
        let a = record.as_ref().and_then(|r| r.get("a").map(str::to_owned));
        let b = record.as_ref().and_then(|r| r.get("b").map(str::to_owned));
        assert_eq!(
            (a.as_deref(), b.as_deref()),
            (None, None),
            "nothing erased came back ({outcome:?})"
        );
        assert!(
            outcome.is_err(),
            "the update's write, based on erased data, is refused"
        );
        assert_eq!(
            read(4).await,
            (0, 0),
            "the next update starts from defaults"
        );
    }

    pub(crate) async fn a_record_expires_and_a_write_after_expiry_starts_empty<S: Store + Clone>(
        Stores { one: store, .. }: Stores<S>,
    ) {
        let base = unique("ttl");
        let (gone, kept, renewed) = (
            format!("{base}:gone"),
            format!("{base}:kept"),
            format!("{base}:renewed"),
        );
        let short = Some(Duration::from_millis(600));
        store
            .apply(&gone, &patch(&[("a", "1")], &[], short))
            .await
            .expect("apply");
        store
            .apply(&renewed, &patch(&[("a", "1")], &[], short))
            .await
            .expect("apply");
        store
            .apply(
                &kept,
                &patch(&[("a", "1")], &[], Some(Duration::from_secs(600))),
            )
            .await
            .expect("apply");
        // The one real wait of the suite: the behaviour under test is time passing.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(store.load(&gone).await.expect("load"), None);
        assert!(store.load(&kept).await.expect("load").is_some());
        let listed = store
            .keys(&format!("{base}:"), None, 10)
            .await
            .expect("list")
            .keys;
        assert!(
            !listed.contains(&gone) && listed.contains(&kept),
            "an expired record is not listed: {listed:?}"
        );
        store
            .apply(&renewed, &patch(&[("b", "2")], &[], None))
            .await
            .expect("apply");
        assert_eq!(
            values(store.load(&renewed).await.expect("load")),
            expect(&[("b", 2.into())])
        );
    }

    pub(crate) async fn concurrent_patches_of_different_fields_from_two_instances_all_land<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let key = unique("two-writers");
        let reader = one.clone();
        let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
        let write = |store, names: &'static [String]| {
            let key = key.clone();
            async move {
                for name in names {
                    store_apply(&store, &key, name).await;
                }
            }
        };
        let names: &'static [String] = Box::leak(names.into_boxed_slice());
        let (left, right) = names.split_at(25);
        tokio::join!(write(one, left), write(two, right));
        let record = reader.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.len(), 50);
    }

    pub(crate) async fn two_processes_incrementing_different_fields_of_one_key_both_end_exact<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let a = SessionMiddleware::<Pair, Update>::new(one.clone());
        let b = SessionMiddleware::<Pair, Update>::new(two.clone());
        let increment_a = Chain::new().with(a).handler(|ctx| {
            Box::pin(async move {
                ctx.pair().await?.update_a(|v| *v += 1);
                Ok(())
            })
        });
        let increment_b = Chain::new().with(b).handler(|ctx| {
            Box::pin(async move {
                ctx.pair().await?.update_b(|v| *v += 1);
                Ok(())
            })
        });
        // Each process gets updates of its own: update ids are unique per bot.
        let run = |chain: Chain<Update>, first: i64| async move {
            for i in first..first + 1000 {
                chain
                    .run_update(Update::text(i, user, user, "+1"))
                    .await
                    .expect("update");
            }
        };
        tokio::join!(run(increment_a, 0), run(increment_b, 1000));
        let record = one
            .load(&format!("Pair:{user}:{user}"))
            .await
            .expect("load")
            .expect("exists");
        assert_eq!(
            (record["a"].as_str(), record["b"].as_str()),
            ("1000", "1000")
        );
    }

    pub(crate) async fn a_field_another_connection_writes_between_our_load_and_save_survives<
        S: Store + Clone,
    >(
        Stores {
            one: ours,
            two: theirs,
            ..
        }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let gated = super::Gated::new(ours.clone());
        let chain = Chain::new()
            .with(SessionMiddleware::<Pair, Update>::new(gated.clone()))
            .handler(|ctx| {
                Box::pin(async move {
                    ctx.pair().await?.update_a(|v| *v += 1);
                    Ok(())
                })
            });
        let update =
            tokio::spawn(async move { chain.run_update(Update::text(1, user, user, "+1")).await });
        gated.arrived.notified().await; // our session is loaded and our patch is on its way
        theirs
            .apply(&key, &patch(&[("b", "7")], &[], None))
            .await
            .expect("their write");
        gated.open.add_permits(1);
        update.await.expect("no panic").expect("update");
        let record = ours.load(&key).await.expect("load").expect("exists");
        assert_eq!((record["a"].as_str(), record["b"].as_str()), ("1", "7"));
    }

    pub(crate) async fn every_supported_field_type_round_trips_through_the_middleware<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let write = Chain::new()
            .with(SessionMiddleware::<Everything, Update>::new(one))
            .handler(|ctx| {
                Box::pin(async move {
                    let s = ctx.everything().await?;
                    // Mark every field so each is written with its (non-trivial) default.
                    let value = s.snapshot();
                    s.replace(Everything {
                        nothing: Some("now something".into()),
                        ..value
                    });
                    s.update_big(|b| *b -= 1);
                    Ok(())
                })
            });
        write
            .run_update(Update::text(1, user, user, "w"))
            .await
            .expect("write");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = parking_lot::Mutex::new(Some(tx));
        let read = Chain::new()
            .with(SessionMiddleware::<Everything, Update>::new(two))
            .handler(move |ctx| {
                let tx = tx.lock().take();
                Box::pin(async move {
                    tx.expect("once")
                        .send(ctx.everything().await?.snapshot())
                        .expect("test alive");
                    Ok(())
                })
            });
        read.run_update(Update::text(2, user, user, "r"))
            .await
            .expect("read");
        let read_back = rx.await.expect("read ran");
        let expected = Everything {
            nothing: Some("now something".into()),
            big: i64::MAX as u64 - 1,
            ..Everything::default()
        };
        assert_eq!(read_back, expected);
    }

    pub(crate) async fn an_unchanged_value_is_not_rewritten_after_a_reload<S: Store + Clone>(
        Stores { one, .. }: Stores<S>,
    ) {
        let user = new_user();
        let sessions = SessionMiddleware::<Everything, Update>::new(one);
        let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
            Box::pin(async move {
                let s = ctx.everything().await?;
                let value = s.snapshot();
                s.replace(value); // every field marked, none changed
                Ok(())
            })
        });
        chain
            .run_update(Update::text(1, user, user, "x"))
            .await
            .expect("first");
        let after_first = sessions.stats().writes();
        chain
            .run_update(Update::text(2, user, user, "x"))
            .await
            .expect("second");
        assert_eq!(
            sessions.stats().writes(),
            after_first,
            "the reloaded values compare equal"
        );
    }

    pub(crate) async fn across_processes_one_update_per_key_runs_at_a_time<S: Store + Clone>(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        // Two middlewares on two connections: two processes, as far as the key knows.
        let (a, chain_a) = leased(one.clone(), Duration::from_secs(30));
        let (b, chain_b) = leased(two, Duration::from_secs(30));
        let (chain_a, chain_b) = (std::sync::Arc::new(chain_a), std::sync::Arc::new(chain_b));
        let mut runs = tokio::task::JoinSet::new();
        for i in 0..16 {
            let chain = std::sync::Arc::clone(if i % 2 == 0 { &chain_a } else { &chain_b });
            runs.spawn(async move {
                chain
                    .run_update(Update::text(i + 1, user, user, "+1"))
                    .await
            });
        }
        while let Some(outcome) = runs.join_next().await {
            outcome.expect("no panic").expect("each update runs");
        }
        let record = one
            .load(&format!("Pair:{user}:{user}"))
            .await
            .expect("load")
            .expect("exists");
        assert_eq!(
            record.get("a"),
            Some("16"),
            "read, .await, write: no increment lost"
        );
        let stats = (a.stats(), b.stats());
        assert_eq!(stats.0.stale_writes() + stats.1.stale_writes(), 0);
        assert_eq!(stats.0.conflicts() + stats.1.conflicts(), 0);
    }

    pub(crate) async fn across_processes_a_lease_taken_over_refuses_the_old_holders_save<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let sessions = SessionMiddleware::<Pair, Update>::builder(one)
            .exclusive_across_processes(Duration::from_secs(5), Duration::from_secs(30))
            .build();
        let (has_key, go_on) = (
            std::sync::Arc::new(tokio::sync::Notify::new()),
            std::sync::Arc::new(tokio::sync::Notify::new()),
        );
        let chain = Chain::new().with(sessions.clone()).handler({
            let (has_key, go_on) = (has_key.clone(), go_on.clone());
            move |ctx| {
                let (has_key, go_on) = (has_key.clone(), go_on.clone());
                Box::pin(async move {
                    ctx.pair().await?.update_a(|a| *a += 1);
                    has_key.notify_one();
                    go_on.notified().await;
                    Ok(())
                })
            }
        });
        let holder =
            tokio::spawn(async move { chain.run_update(Update::text(1, user, user, "+1")).await });
        has_key.notified().await;
        // Another process takes the lease over (as after this one stalled past it).
        take_over_lease(&two, &key).await;
        go_on.notify_one();
        let error = holder
            .await
            .expect("no panic")
            .expect_err("the old holder's save is refused");
        let error = error
            .downcast::<typed_session::SessionError>()
            .expect("typed");
        assert!(
            matches!(*error, typed_session::SessionError::LeaseLost { .. }),
            "{error}"
        );
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            record.get("a"),
            None,
            "nothing of the refused save was written"
        );
        assert_eq!(sessions.stats().leases_lost(), 1);
    }

    pub(crate) async fn across_processes_an_expired_lease_is_taken_over_and_a_live_one_waited_for<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        // A process crashed holding the key: its lease runs out 300 ms from now.
        let crashed = format!(r#"{{"holder":"a crashed process","until":{}}}"#, now + 300);
        two.apply(&key, &Patch::new().set_field("@lease", crashed))
            .await
            .expect("leased");

        // Waiting less than that is a typed error, and writes nothing.
        refused_while_held(two.clone(), user, 1).await;

        // Waiting longer takes the lease over once it has run out.
        let (patient, chain) = leased(one, Duration::from_secs(10));
        let started = std::time::Instant::now();
        chain
            .run_update(Update::text(2, user, user, "+1"))
            .await
            .expect("taken over");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "waited for the lease to run out"
        );
        assert_eq!(patient.stats().lease_takeovers(), 1);
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.get("a"), Some("1"));
    }

    /// "Exclusive mode", a lease kept between updates: the next update of the key in this
    /// process neither loads nor claims (one store call to write, none to read), another
    /// process waits for the kept lease to run out (no take-over, since nothing failed) and
    /// builds on every write the first made, and the first then loads again.
    pub(crate) async fn across_processes_a_kept_lease_spares_the_load_and_the_claim_and_others_wait_for_it<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        // Long enough that the updates below reuse it on a loaded machine (at least half of
        // it must be left), short enough that the patient process's wait for it stays short.
        let (sessions, chain, calls) = kept_leased(one, Duration::from_secs(3));
        let run =
            |id: i64, text: &'static str| chain.run_update(Update::text(id, user, user, text));

        let lease_version = || async {
            let record = two.load(&key).await.expect("load").expect("exists");
            record.version("@lease")
        };

        run(1, "+1").await.expect("first update");
        assert_eq!(calls(), 3, "the first update loads, claims and writes");
        let kept_by_first = lease_version().await;
        run(2, "+1").await.expect("second update");
        assert_eq!(calls(), 4, "the next writing update only writes");
        assert_eq!(
            lease_version().await,
            kept_by_first + 1,
            "its patch keeps the lease for the linger from now"
        );
        run(3, "read").await.expect("third update");
        assert_eq!(
            calls(),
            4,
            "a read-only update under the kept lease calls nothing"
        );
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.get("a"), Some("2"));
        let lease: serde_json::Value =
            serde_json::from_str(record.get("@lease").expect("the lease is stored")).expect("JSON");
        assert_eq!(lease["kept"], true, "{lease}");

        // Another process that waits less than the lease is kept gets `Busy`, and writes nothing.
        refused_while_held(two.clone(), user, 4).await;

        // One that waits long enough takes the key once the lease has run out: not a take-over.
        let (patient, chain_b) = leased(two.clone(), Duration::from_secs(10));
        chain_b
            .run_update(Update::text(5, user, user, "+1"))
            .await
            .expect("the lease ran out");
        assert_eq!(patient.stats().lease_takeovers(), 0);
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            record.get("a"),
            Some("3"),
            "built on the kept lease's writes"
        );

        // The first process's lease ran out meanwhile: it loads and claims again, and builds
        // on the other's write.
        run(6, "+1").await.expect("sixth update");
        assert_eq!(calls(), 7);
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.get("a"), Some("4"));
        assert_eq!(
            sessions.stats().conflicts() + patient.stats().conflicts(),
            0
        );
    }

    /// "Exclusive mode": `clear()` deletes the kept lease with the record, and the patch that
    /// follows the delete claims it again, so the key stays this process's (another one still
    /// waits) and the next update needs no claim.
    pub(crate) async fn across_processes_a_kept_lease_is_claimed_again_by_the_patch_after_a_clear<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let (sessions, chain, calls) = kept_leased(one, Duration::from_secs(10));
        let run =
            |id: i64, text: &'static str| chain.run_update(Update::text(id, user, user, text));
        run(1, "+1").await.expect("first update");
        run(2, "clear").await.expect("the clearing update");
        assert_eq!(
            calls(),
            5,
            "load, claim, patch; then the delete and the patch"
        );
        let record = two
            .load(&key)
            .await
            .expect("load")
            .expect("the lease is stored");
        assert_eq!(record.get("a"), None, "cleared");

        refused_while_held(two.clone(), user, 3).await;

        run(4, "+1").await.expect("an update after the clear");
        assert_eq!(calls(), 6, "under the lease claimed again: only the patch");
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.get("a"), Some("1"));
        assert_eq!(sessions.stats().leases_lost(), 0);
    }

    /// "Exclusive mode": an update waiting for another process's lease reads the record
    /// again when a read fails, until its deadline, instead of failing on the first failed
    /// read (with a kept lease the wait can be long); it then takes the key and writes.
    pub(crate) async fn across_processes_a_read_that_fails_while_waiting_for_the_lease_is_read_again<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        use std::sync::Arc;
        use tokio::sync::Notify;
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let (entered, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let holder = SessionMiddleware::<Pair, Update>::builder(one)
            .exclusive_across_processes(Duration::from_secs(10), Duration::from_secs(10))
            .build();
        let holding = {
            let (entered, go) = (Arc::clone(&entered), Arc::clone(&go));
            Chain::new().with(holder).handler(move |ctx| {
                let (entered, go) = (Arc::clone(&entered), Arc::clone(&go));
                Box::pin(async move {
                    let _ = ctx.pair().await?.a();
                    entered.notify_one();
                    go.notified().await;
                    Ok(())
                })
            })
        };
        let held = tokio::spawn(async move {
            holding
                .run_update(Update::text(1, user, user, "hold"))
                .await
        });
        entered.notified().await;

        let flaky = Counted::new(two.clone());
        let (loaded, fail_loads) = (Arc::clone(&flaky.loaded), Arc::clone(&flaky.fail_loads));
        let (waiter, chain) = leased(flaky, Duration::from_secs(10));
        let mut waiting =
            tokio::spawn(async move { chain.run_update(Update::text(2, user, user, "+1")).await });
        // Its first read found the lease held: the next two fail, then the holder lets go.
        loaded.notified().await;
        fail_loads.store(2, Ordering::SeqCst);
        while fail_loads.load(Ordering::SeqCst) > 0 {
            tokio::select! {
                _ = loaded.notified() => {}
                ended = &mut waiting => {
                    panic!("the waiting update ended while the lease was held: {ended:?}")
                }
            }
        }
        go.notify_one();
        held.await
            .expect("holder task")
            .expect("the holder's update");
        waiting
            .await
            .expect("waiter task")
            .expect("the waiting update gets through failed reads");
        assert_eq!(waiter.stats().writes(), 1);
        let record = two.load(&key).await.expect("load").expect("stored");
        assert_eq!(record.get("a"), Some("1"));
    }

    /// "Exclusive mode", fencing under a kept lease: another process takes the lease over
    /// while this one keeps it (as when their clocks are far apart); this process's next
    /// update, which uses the kept lease without a load, has its patch refused whole
    /// (`LeaseLost`), and nothing of it is written.
    pub(crate) async fn across_processes_a_kept_lease_taken_over_refuses_the_next_update_without_a_load<
        S: Store + Clone,
    >(
        Stores { one, two, .. }: Stores<S>,
    ) {
        let user = new_user();
        let key = format!("Pair:{user}:{user}");
        let (sessions, chain, calls) = kept_leased(one, Duration::from_secs(10));
        chain
            .run_update(Update::text(1, user, user, "+1"))
            .await
            .expect("first update");
        take_over_lease(&two, &key).await;

        let error = chain
            .run_update(Update::text(2, user, user, "+1"))
            .await
            .expect_err("the kept lease was lost");
        let error = error
            .downcast::<typed_session::SessionError>()
            .expect("typed");
        assert!(
            matches!(*error, typed_session::SessionError::LeaseLost { .. }),
            "{error}"
        );
        assert_eq!(
            calls(),
            4,
            "load, claim, patch; then the refused patch alone"
        );
        let record = two.load(&key).await.expect("load").expect("exists");
        assert_eq!(record.get("a"), Some("1"), "nothing of the refused patch");
        assert_eq!(sessions.stats().leases_lost(), 1);
    }
}

/// A middleware in exclusive mode across processes, waiting at most `wait` for a key, and a
/// chain that increments `a` by reading it, awaiting, and setting it.
fn leased<S: Store>(store: S, wait: Duration) -> (SessionMiddleware<Pair, Update>, Chain<Update>) {
    let sessions = SessionMiddleware::<Pair, Update>::builder(store)
        .exclusive_across_processes(wait, Duration::from_secs(10))
        .build();
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let pair = ctx.pair().await?;
            let seen = pair.a();
            tokio::time::sleep(Duration::from_millis(1)).await;
            pair.set_a(seen + 1);
            Ok(())
        })
    });
    (sessions, chain)
}

/// A middleware in exclusive mode across processes that keeps its leases for `linger`, on
/// `store` counted, a chain whose update `"+1"` increments `a`, `"clear"` clears the session
/// and any other text reads `a`, and the count of store calls so far.
fn kept_leased<S: Store>(
    store: S,
    linger: Duration,
) -> (
    SessionMiddleware<Pair, Update>,
    Chain<Update>,
    impl Fn() -> u64,
) {
    let counted = Counted::new(store);
    let calls = std::sync::Arc::clone(&counted.calls);
    let sessions = SessionMiddleware::<Pair, Update>::builder(counted)
        .exclusive_across_processes(Duration::from_secs(10), Duration::from_secs(10))
        .keep_lease(linger)
        .build();
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            let pair = ctx.pair().await?;
            match ctx.update().text_of() {
                Some("+1") => pair.update_a(|a| *a += 1),
                Some("clear") => pair.clear(),
                _ => {
                    let _ = pair.a();
                }
            }
            Ok(())
        })
    });
    (sessions, chain, move || calls.load(Ordering::SeqCst))
}

/// Another process takes over the lease of `key` for a minute, with a write conditional on
/// the lease's version (as after its holder stalled past it).
async fn take_over_lease(store: &impl Store, key: &str) {
    let version = store
        .load(key)
        .await
        .expect("load")
        .expect("the lease is stored")
        .version("@lease");
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
        + 60_000;
    let takeover = format!(r#"{{"holder":"another process","until":{until}}}"#);
    store
        .apply(
            key,
            &Patch::new()
                .set_field("@lease", takeover)
                .expect_version("@lease", version),
        )
        .await
        .expect("taken over");
}

/// Update `id` of `user` in another process that waits at most 50 ms for the key, while its
/// lease is held: `Busy`, and nothing written.
async fn refused_while_held<S: Store>(store: S, user: i64, id: i64) {
    let (impatient, chain) = leased(store, Duration::from_millis(50));
    let error = chain
        .run_update(Update::text(id, user, user, "+1"))
        .await
        .expect_err("busy");
    let error = error
        .downcast::<typed_session::SessionError>()
        .expect("typed");
    assert!(
        matches!(*error, typed_session::SessionError::Busy { .. }),
        "{error}"
    );
    assert_eq!(impatient.stats().writes(), 0);
}

/// Holds each `apply` until the test opens the gate; tells the test when one arrives.
#[derive(Clone)]
struct Gated<S> {
    inner: S,
    arrived: std::sync::Arc<tokio::sync::Notify>,
    open: std::sync::Arc<tokio::sync::Semaphore>,
}

impl<S: Store> Gated<S> {
    fn new(inner: S) -> Self {
        Gated {
            inner,
            arrived: Default::default(),
            open: std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl<S: Store> Store for Gated<S> {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> typed_session::store::StoreFuture<'a, Result<Option<Record>, typed_session::StoreError>>
    {
        self.inner.load(key)
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> typed_session::store::StoreFuture<'a, Result<(), typed_session::StoreError>> {
        typed_session::store::StoreFuture::new(async move {
            self.arrived.notify_one();
            self.open.acquire().await.expect("never closed").forget();
            self.inner.apply(key, patch).await
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
    ) -> typed_session::store::StoreFuture<'a, Result<(), typed_session::StoreError>> {
        self.inner.delete(key)
    }

    fn returns_written_text(&self) -> bool {
        self.inner.returns_written_text()
    }

    fn reads_are_durable(&self) -> bool {
        self.inner.reads_are_durable()
    }
}

/// Counts the store calls made through it (loads, applies and deletes alike), tells when a
/// load was answered, and fails the next `fail_loads` loads before they reach the store.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: std::sync::Arc<AtomicU64>,
    loaded: std::sync::Arc<tokio::sync::Notify>,
    fail_loads: std::sync::Arc<AtomicU64>,
}

impl<S: Store> Counted<S> {
    fn new(inner: S) -> Self {
        Counted {
            inner,
            calls: Default::default(),
            loaded: Default::default(),
            fail_loads: Default::default(),
        }
    }
}

impl<S: Store> Store for Counted<S> {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> typed_session::store::StoreFuture<'a, Result<Option<Record>, typed_session::StoreError>>
    {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fails = self
            .fail_loads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        typed_session::store::StoreFuture::new(async move {
            let loaded = if fails {
                Err(typed_session::StoreError::backend(
                    "test",
                    typed_session::StoreOp::Load,
                    key,
                    "a load failed on purpose",
                ))
            } else {
                self.inner.load(key).await
            };
            self.loaded.notify_one();
            loaded
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> typed_session::store::StoreFuture<'a, Result<(), typed_session::StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.apply(key, patch)
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
    ) -> typed_session::store::StoreFuture<'a, Result<(), typed_session::StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key)
    }

    fn returns_written_text(&self) -> bool {
        self.inner.returns_written_text()
    }

    fn reads_are_durable(&self) -> bool {
        self.inner.reads_are_durable()
    }
}

async fn store_apply(store: &impl Store, key: &str, field: &str) {
    store
        .apply(key, &patch(&[(field, "1")], &[], None))
        .await
        .expect("apply");
}

/// A user id no other test of this process uses (and no other process's).
fn new_user() -> i64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (std::process::id() as i64) * 1_000_000 + (NEXT.fetch_add(1, Ordering::Relaxed) as i64)
}

// ---- the stores -------------------------------------------------------------------------

mod memory_backend {
    use std::sync::OnceLock;

    use typed_session::MemoryStore;

    /// Two handles on one memory store (what two instances share in one process).
    pub(crate) async fn stores(_test: &'static str) -> Option<(MemoryStore, MemoryStore)> {
        static STORE: OnceLock<MemoryStore> = OnceLock::new();
        let store = STORE.get_or_init(MemoryStore::new).clone();
        Some((store.clone(), store))
    }
}
conformance!(memory, memory_backend::stores);

#[cfg(feature = "sqlite")]
mod sqlite_backends {
    use typed_session::SqliteStore;

    /// A file database in WAL mode, opened twice (two independent pools), a commit per patch.
    pub(crate) async fn file(_test: &'static str) -> Option<(SqliteStore, SqliteStore)> {
        let path = std::env::temp_dir().join(format!(
            "typed-session-conformance-{}.db",
            std::process::id()
        ));
        let url = format!("sqlite://{}", path.display());
        // A commit per patch; `file_grouped` has the default, group commit.
        let one = SqliteStore::connect(&url)
            .await
            .expect("open")
            .with_group_commit(false);
        one.migrate().await.expect("migrate");
        let two = SqliteStore::connect(&url)
            .await
            .expect("open again")
            .with_group_commit(false);
        Some((one, two))
    }

    /// A file database in WAL mode with group commit, opened twice.
    pub(crate) async fn file_grouped(_test: &'static str) -> Option<(SqliteStore, SqliteStore)> {
        let path = std::env::temp_dir().join(format!(
            "typed-session-conformance-grouped-{}.db",
            std::process::id()
        ));
        let url = format!("sqlite://{}", path.display());
        let one = SqliteStore::connect(&url)
            .await
            .expect("open")
            .with_group_commit(true);
        one.migrate().await.expect("migrate");
        let two = SqliteStore::connect(&url)
            .await
            .expect("open again")
            .with_group_commit(true);
        Some((one, two))
    }

    /// A file database in WAL mode whose locks the store keeps (`Locking::Exclusive`): no
    /// other connection can open it, so both handles share the one connection. A file per
    /// test (the tests run side by side, each store holding its file's locks), written over
    /// by the next run.
    pub(crate) async fn file_exclusive(test: &'static str) -> Option<(SqliteStore, SqliteStore)> {
        let path = std::env::temp_dir().join(format!("typed-session-exclusive-{test}.db"));
        crate::common::remove_sqlite_file(&path);
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::connect(&url).await.expect("open");
        store.migrate().await.expect("migrate");
        let store = store
            .with_locking(typed_session::store::Locking::Exclusive)
            .expect("the file's locks");
        Some((store.clone(), store))
    }

    /// An in-memory database (one connection, shared by both handles).
    pub(crate) async fn memory(_test: &'static str) -> Option<(SqliteStore, SqliteStore)> {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        Some((store.clone(), store))
    }
}
#[cfg(feature = "sqlite")]
conformance!(sqlite_file, sqlite_backends::file);
#[cfg(feature = "sqlite")]
conformance!(sqlite_file_grouped, sqlite_backends::file_grouped);

#[cfg(feature = "postgres")]
mod postgres_backend {
    use typed_session::PostgresStore;

    pub(crate) async fn stores(test: &'static str) -> Option<(PostgresStore, PostgresStore)> {
        let url = crate::common::server_url("POSTGRES_URL", "postgres", test)?;
        let one = PostgresStore::connect(&url).await.expect("connect");
        one.migrate().await.expect("migrate");
        let two = PostgresStore::connect(&url).await.expect("connect again");
        Some((one, two))
    }
}
#[cfg(feature = "postgres")]
conformance!(postgres, postgres_backend::stores);

#[cfg(feature = "mysql")]
mod mysql_backend {
    use typed_session::MySqlStore;

    pub(crate) async fn stores(test: &'static str) -> Option<(MySqlStore, MySqlStore)> {
        let url = crate::common::server_url("MYSQL_URL", "mysql", test)?;
        let one = MySqlStore::connect(&url).await.expect("connect");
        one.migrate().await.expect("migrate");
        let two = MySqlStore::connect(&url).await.expect("connect again");
        Some((one, two))
    }
}
#[cfg(feature = "mysql")]
conformance!(mysql, mysql_backend::stores);

#[cfg(feature = "sqlite")]
conformance!(sqlite_memory, sqlite_backends::memory);
#[cfg(feature = "sqlite")]
conformance!(sqlite_file_exclusive, sqlite_backends::file_exclusive);

#[cfg(feature = "redis")]
mod redis_backend {
    use typed_session::RedisStore;

    pub(crate) async fn stores(test: &'static str) -> Option<(RedisStore, RedisStore)> {
        let url = crate::common::server_url("REDIS_URL", "redis", test)?;
        let one = RedisStore::connect(&url)
            .await
            .expect("connect")
            .with_prefix("typed_session_test:");
        let two = RedisStore::connect(&url)
            .await
            .expect("connect again")
            .with_prefix("typed_session_test:");
        Some((one, two))
    }
}
#[cfg(feature = "redis")]
conformance!(redis, redis_backend::stores);

#[cfg(feature = "redis-cluster")]
mod redis_cluster_backend {
    use typed_session::RedisStore;
    use typed_session::redis::cluster_async::ClusterConnection;

    /// A Redis Cluster (`REDIS_CLUSTER_URLS`, comma-separated node URLs), connected to twice;
    /// the first connection acknowledges a write only once a replica has it.
    pub(crate) async fn stores(
        test: &'static str,
    ) -> Option<(RedisStore<ClusterConnection>, RedisStore<ClusterConnection>)> {
        let urls = crate::common::server_url("REDIS_CLUSTER_URLS", "redis-cluster", test)?;
        let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
        let one = RedisStore::connect_cluster(&nodes)
            .await
            .expect("connect")
            .with_prefix("typed_session_test:")
            .wait_for_replicas(1, std::time::Duration::from_secs(2));
        let two = RedisStore::connect_cluster(&nodes)
            .await
            .expect("connect again")
            .with_prefix("typed_session_test:");
        Some((one, two))
    }
}
#[cfg(feature = "redis-cluster")]
conformance!(redis_cluster, redis_cluster_backend::stores);

#[cfg(feature = "mongodb")]
mod mongodb_backend {
    use typed_session::MongoStore;

    pub(crate) async fn stores(test: &'static str) -> Option<(MongoStore, MongoStore)> {
        let url = crate::common::server_url("MONGODB_URL", "mongodb", test)?;
        // The server here is SecantusDB, written in Python: a patch of 1,000 fields takes it
        // about 2 s, the store's default deadline (a real MongoDB, milliseconds). These tests
        // are about what is stored; `tests/it/faults.rs` is about deadlines.
        let patient = std::time::Duration::from_secs(20);
        let one = MongoStore::connect(&url, "typed_session_test")
            .await
            .expect("connect")
            .with_timeout(patient);
        one.migrate().await.expect("migrate");
        let two = MongoStore::connect(&url, "typed_session_test")
            .await
            .expect("connect again")
            .with_timeout(patient);
        Some((one, two))
    }
}
#[cfg(feature = "mongodb")]
conformance!(mongodb, mongodb_backend::stores);
