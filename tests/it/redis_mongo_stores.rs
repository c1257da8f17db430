//! What is particular to the Redis and MongoDB stores: how a session looks in each, native
//! expiry, and read errors that are errors ("read errors are errors").
#![cfg(any(feature = "redis", feature = "mongodb"))]

use crate::common;

use common::{server_url, unique};

use std::time::Duration;

use typed_session::store::Patch;
use typed_session::{Store, StoreError};

fn patch<'a>(set: &[(&'a str, &str)], ttl: Option<Duration>) -> Patch<'a> {
    set.iter()
        .fold(Patch::new().with_ttl(ttl), |patch, (k, v)| {
            patch.set_field(k, *v)
        })
}

/// Writes `Counter` of a fresh user with a 60 s term, then reads it once through a middleware
/// whose term is 600 s, renewed on write and then on access; checks the renewals written and
/// what `left_ms(key)` says remains of the record's expiry: 600 s when the read renewed it,
/// at most the 60 s of the write when it did not.
async fn check_a_read_renews_on_access_only<S, F, Fut>(store: &S, base: i64, left_ms: F)
where
    S: Store + Clone,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    use typed_session::telegram::Update;
    use typed_session::{Chain, Renewal, SessionMiddleware};

    for (n, renewal) in [Renewal::OnWrite, Renewal::OnAccess]
        .into_iter()
        .enumerate()
    {
        let user = base * 10 + n as i64;
        let key = format!("Counter:{user}:{user}");
        store
            .apply(
                &key,
                &patch(&[("count", "1")], Some(Duration::from_secs(60))),
            )
            .await
            .expect("apply");
        let sessions = SessionMiddleware::<common::Counter, Update>::builder(store.clone())
            .ttl(Some(Duration::from_secs(600)))
            .renewal(renewal)
            .build();
        let read = Chain::new().with(sessions.clone()).handler(|ctx| {
            Box::pin(async move {
                assert_eq!(ctx.session_of::<common::Counter>().await?.count(), 1);
                Ok(())
            })
        });
        read.run_update(Update::text(user, user, user, "read"))
            .await
            .expect("read");
        let left = left_ms(key).await;
        if renewal == Renewal::OnAccess {
            assert_eq!(sessions.stats().renewals(), 1);
            assert!(left > 590_000, "renewed to 600 s: {left} ms left");
        } else {
            assert_eq!(sessions.stats().renewals(), 0);
            assert!(left <= 60_000, "left at 60 s: {left} ms left");
        }
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use typed_session::RedisStore;

    async fn connection(
        test: &str,
    ) -> Option<(RedisStore, typed_session::redis::aio::ConnectionManager)> {
        let url = server_url("REDIS_URL", "redis", test)?;
        let client = typed_session::redis::Client::open(url).expect("url");
        let manager = typed_session::redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect");
        Some((
            RedisStore::from_connection(manager.clone()).with_prefix("ts_test:"),
            manager,
        ))
    }

    #[tokio::test]
    async fn a_session_is_a_hash_of_json_fields_with_a_native_expiry() {
        let Some((store, mut raw)) =
            connection("a_session_is_a_hash_of_json_fields_with_a_native_expiry").await
        else {
            return;
        };
        let key = unique("hash");
        store
            .apply(
                &key,
                &patch(
                    &[("count", "3"), ("lang", "\"de\"")],
                    Some(Duration::from_secs(60)),
                ),
            )
            .await
            .expect("apply");

        let hash: std::collections::HashMap<String, String> = typed_session::redis::cmd("HGETALL")
            .arg(format!("ts_test:{key}"))
            .query_async(&mut raw)
            .await
            .expect("HGETALL");
        // The two fields, and beside each its version under a NUL-prefixed name.
        assert_eq!(hash.len(), 4);
        assert_eq!(
            (hash["count"].as_str(), hash["lang"].as_str()),
            ("3", "\"de\"")
        );
        assert_eq!(
            (hash["\0count"].as_str(), hash["\0lang"].as_str()),
            ("1", "1")
        );
        let pttl: i64 = typed_session::redis::cmd("PTTL")
            .arg(format!("ts_test:{key}"))
            .query_async(&mut raw)
            .await
            .expect("PTTL");
        assert!((1..=60_000).contains(&pttl), "PEXPIRE was applied: {pttl}");
    }

    /// Written with a 60 s term, then read by a middleware whose term is 600 s: renewed on
    /// access, Redis's own expiry of the hash moves to 600 s; renewed on write, it stays.
    #[tokio::test]
    async fn a_read_moves_the_native_expiry_on_access_only() {
        let Some((store, raw)) = connection("a_read_moves_the_native_expiry_on_access_only").await
        else {
            return;
        };
        let base = (std::process::id() as i64) * 1_000 + 3;
        check_a_read_renews_on_access_only(&store, base, |key| {
            let mut raw = raw.clone();
            async move {
                typed_session::redis::cmd("PTTL")
                    .arg(format!("ts_test:{key}"))
                    .query_async(&mut raw)
                    .await
                    .expect("PTTL")
            }
        })
        .await;
    }

    /// A write that must reach a replica, on a Redis with none: it fails, naming why, once
    /// the wait is over; it is on the master all the same (the redelivery of its update is
    /// recognised by its id).
    #[tokio::test]
    async fn a_write_no_replica_acknowledged_fails_and_says_so() {
        let Some((store, _)) =
            connection("a_write_no_replica_acknowledged_fails_and_says_so").await
        else {
            return;
        };
        let store = store.wait_for_replicas(1, Duration::from_millis(100));
        let key = unique("unreplicated");
        let started = std::time::Instant::now();
        let error = store
            .apply(&key, &patch(&[("a", "1")], None))
            .await
            .expect_err("no replica");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "waited for the replicas"
        );
        assert!(
            error
                .to_string()
                .contains("0 of 1 replicas acknowledged it"),
            "{error}"
        );
        let record = store
            .load(&key)
            .await
            .expect("load")
            .expect("on the master");
        assert_eq!(record.get("a"), Some("1"));
    }

    #[tokio::test]
    async fn a_key_holding_something_else_is_a_read_error_not_an_empty_session() {
        let Some((store, mut raw)) =
            connection("a_key_holding_something_else_is_a_read_error_not_an_empty_session").await
        else {
            return;
        };
        let key = unique("wrongtype");
        typed_session::redis::cmd("SET")
            .arg(format!("ts_test:{key}"))
            .arg("a string")
            .query_async::<()>(&mut raw)
            .await
            .expect("SET");

        let error = store.load(&key).await.expect_err("WRONGTYPE");
        assert!(
            matches!(error, StoreError::Backend { key: ref k, .. } if *k == key),
            "{error}"
        );
    }
}

#[cfg(feature = "redis")]
mod redis_bad_bytes {
    use super::*;
    use typed_session::RedisStore;

    /// Something else wrote bytes that are not UTF-8 into a session hash: the read error names
    /// the field.
    #[tokio::test]
    async fn a_value_that_is_not_utf8_is_a_read_error_naming_its_field() {
        let Some(url) = server_url("REDIS_URL", "redis", "a_value_that_is_not_utf8") else {
            return;
        };
        let client = typed_session::redis::Client::open(url.as_str()).expect("url");
        let mut raw = typed_session::redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect");
        let store = RedisStore::connect(&url)
            .await
            .expect("connect")
            .with_prefix("ts_test:");
        let key = unique("utf8");
        typed_session::redis::cmd("HSET")
            .arg(format!("ts_test:{key}"))
            .arg("lang")
            .arg(&[0xff_u8, 0xfe][..])
            .query_async::<()>(&mut raw)
            .await
            .expect("HSET");
        let error = store.load(&key).await.expect_err("not UTF-8");
        assert!(
            matches!(error, StoreError::Malformed { ref field, .. } if field == "lang"),
            "{error}"
        );
    }
}

#[cfg(feature = "mongodb")]
mod mongo_store {
    use super::*;
    use typed_session::MongoStore;
    use typed_session::mongodb::bson::{Bson, doc};

    async fn store(test: &str) -> Option<MongoStore> {
        let url = server_url("MONGODB_URL", "mongodb", test)?;
        let store = MongoStore::connect(&url, "typed_session_test")
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        Some(store)
    }

    /// The document the store wrote for `key`, read with the driver.
    async fn document(store: &MongoStore, key: &str) -> typed_session::mongodb::bson::Document {
        store
            .collection()
            .find_one(doc! { "_id": key })
            .await
            .expect("find")
            .expect("exists")
    }

    #[tokio::test]
    async fn fields_are_stored_as_native_bson_values() {
        let Some(store) = store("fields_are_stored_as_native_bson_values").await else {
            return;
        };
        let key = unique("native");
        let fields = [
            ("count", "3"),
            ("big", "9007199254740993"),
            ("ratio", "0.5"),
            ("lang", "\"de\""),
            ("tags", "[\"a\"]"),
            ("address", "{\"city\":\"Zürich\"}"),
        ];
        store
            .apply(&key, &patch(&fields, None))
            .await
            .expect("apply");

        let document = document(&store, &key).await;
        let data = document.get_document("data").expect("a data document");
        assert_eq!(data.get("count"), Some(&Bson::Int32(3)));
        assert_eq!(data.get("big"), Some(&Bson::Int64(9_007_199_254_740_993)));
        assert_eq!(data.get("ratio"), Some(&Bson::Double(0.5)));
        assert_eq!(data.get("lang"), Some(&Bson::String("de".into())));
        assert!(matches!(data.get("tags"), Some(Bson::Array(_))));
        assert_eq!(
            data.get_document("address")
                .expect("a document")
                .get_str("city"),
            Ok("Zürich")
        );
        // ... so the data can be queried like any other.
        let by_lang = store
            .collection()
            .count_documents(doc! { "_id": &key, "data.lang": "de" })
            .await
            .expect("count");
        assert_eq!(by_lang, 1);
    }

    #[tokio::test]
    async fn an_integer_bson_cannot_hold_is_an_error_naming_the_field() {
        let Some(store) = store("an_integer_bson_cannot_hold_is_an_error_naming_the_field").await
        else {
            return;
        };
        let error = store
            .apply(
                &unique("u64"),
                &patch(&[("huge", "18446744073709551615")], None),
            )
            .await
            .expect_err("too big");
        assert!(
            matches!(error, StoreError::Malformed { ref field, .. } if field == "huge"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn migrate_creates_the_ttl_index_once() {
        let Some(store) = store("migrate_creates_the_ttl_index_once").await else {
            return;
        };
        store.migrate().await.expect("again");
        let names = store
            .collection()
            .list_index_names()
            .await
            .expect("indexes");
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "typed_session_expiry")
                .count(),
            1,
            "{names:?}"
        );
    }

    /// Written with a 60 s term, then read by a middleware whose term is 600 s: renewed on
    /// access, the document's `expires_at` moves to 600 s from now; renewed on write, it stays.
    #[tokio::test]
    async fn a_read_moves_the_expiry_date_on_access_only() {
        let Some(store) = store("a_read_moves_the_expiry_date_on_access_only").await else {
            return;
        };
        let base = (std::process::id() as i64) * 1_000 + 5;
        check_a_read_renews_on_access_only(&store, base, |key| {
            let store = store.clone();
            async move {
                let at = document(&store, &key)
                    .await
                    .get_datetime("expires_at")
                    .expect("a date")
                    .timestamp_millis();
                at - typed_session::mongodb::bson::DateTime::now().timestamp_millis()
            }
        })
        .await;
    }

    #[tokio::test]
    async fn expiry_is_a_date_in_the_document() {
        let Some(store) = store("expiry_is_a_date_in_the_document").await else {
            return;
        };
        let key = unique("date");
        store
            .apply(&key, &patch(&[("a", "1")], Some(Duration::from_secs(3600))))
            .await
            .expect("apply");
        let document = document(&store, &key).await;
        let at = document.get_datetime("expires_at").expect("a date");
        let in_ms = at.timestamp_millis()
            - typed_session::mongodb::bson::DateTime::now().timestamp_millis();
        assert!((3_500_000..=3_600_000).contains(&in_ms), "{in_ms}");
    }

    #[tokio::test]
    async fn a_document_whose_data_is_not_a_document_is_a_read_error() {
        let Some(store) = store("a_document_whose_data_is_not_a_document_is_a_read_error").await
        else {
            return;
        };
        let key = unique("broken");
        store
            .collection()
            .insert_one(doc! { "_id": &key, "data": "not a document" })
            .await
            .expect("insert");
        let error = store.load(&key).await.expect_err("malformed");
        assert!(
            matches!(error, StoreError::Malformed { ref field, .. } if field == "data"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn invalid_database_and_collection_names_are_rejected() {
        let Some(url) = server_url(
            "MONGODB_URL",
            "mongodb",
            "invalid_database_and_collection_names_are_rejected",
        ) else {
            return;
        };
        let client = typed_session::mongodb::Client::with_uri_str(&url)
            .await
            .expect("client");
        assert!(matches!(
            MongoStore::from_client(client.clone(), "a/b"),
            Err(StoreError::Config { .. })
        ));
        let store = MongoStore::from_client(client, "typed_session_test").expect("valid");
        assert!(matches!(
            store.clone().with_collection("system.users"),
            Err(StoreError::Config { .. })
        ));
        assert!(matches!(
            store.with_collection("a$b"),
            Err(StoreError::Config { .. })
        ));
    }
}
