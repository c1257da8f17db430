//! [`MongoStore`]: one MongoDB document per session, fields as native BSON (feature `mongodb`).

use std::time::Duration;

use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, Database, IndexModel};

use super::{Cursor, Page, Patch, Record, Store, StoreFuture, page_of, within};
use crate::error::{StoreError, StoreOp};

const BACKEND: &str = "mongodb";
const DUPLICATE_KEY: i32 = 11000;

/// Sessions in MongoDB, one document per session:
///
/// ```text
/// { _id: "42:42", data: { count: 3, lang: "de" }, expires_at: ISODate("2026-12-27T10:00:00Z") }
/// ```
///
/// Fields are native BSON values (numbers, strings, arrays, documents), not JSON strings, so
/// the data stays queryable: `db.typed_sessions.find({"data.lang": "de"})`. A patch is one
/// `update_one` with `$set` of `data.<field>` and `$unset` of removed fields, with upsert.
/// Expiry is a date in `expires_at` with a TTL index ([`migrate`](Self::migrate) creates it);
/// MongoDB removes expired documents about once a minute, and until then loads ignore them.
///
/// BSON has no unsigned 64-bit integer: a `u64` above `i64::MAX` cannot be stored, and a
/// patch that holds one fails with [`StoreError::Malformed`] naming the field.
///
/// # Example
///
/// ```no_run
/// use typed_session::MongoStore;
///
/// # async fn run() -> Result<(), typed_session::StoreError> {
/// let store = MongoStore::connect("mongodb://127.0.0.1:27017", "mybot").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    database: Database,
    collection: Collection<Document>,
    timeout: Duration,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.database.name())
            .field("collection", &self.collection.name())
            .finish_non_exhaustive()
    }
}

impl MongoStore {
    /// How long a call waits by default, server selection included.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connects to `url` (`mongodb://host:port`) and uses database `database`, with the
    /// default deadline: every call fails once it has waited 2 s (the driver's own defaults
    /// wait 30 s to select a server while it is down).
    pub async fn connect(url: &str, database: &str) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, database, Self::DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another deadline for connecting, selecting a server
    /// and every call. A patch whose answer did not come in time may still have been applied;
    /// the update's redelivery is then recognised by its id.
    pub async fn connect_with_timeout(
        url: &str,
        database: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let error = |e| StoreError::backend(BACKEND, StoreOp::Connect, "", e);
        let mut options = mongodb::options::ClientOptions::parse(url)
            .await
            .map_err(error)?;
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options).map_err(error)?;
        Ok(Self::from_client(client, database)?.with_timeout(timeout))
    }

    /// How long each call waits for an answer before it fails (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A store over a client the application already has, used as it is.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] when `database` is not a valid database name.
    pub fn from_client(client: Client, database: &str) -> Result<Self, StoreError> {
        let invalid = database.is_empty()
            || database.len() > 63
            || database.contains([
                '/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?', '\0',
            ]);
        if invalid {
            return Err(StoreError::Config {
                backend: BACKEND,
                message: format!("{database:?} is not a valid MongoDB database name"),
            });
        }
        let database = client.database(database);
        let collection = database.collection("typed_sessions");
        Ok(MongoStore {
            client,
            database,
            collection,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// Uses collection `name` instead of `typed_sessions`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] when the name is empty, holds `$` or NUL, or starts with `system.`.
    pub fn with_collection(mut self, name: &str) -> Result<Self, StoreError> {
        if name.is_empty() || name.contains(['$', '\0']) || name.starts_with("system.") {
            return Err(StoreError::Config {
                backend: BACKEND,
                message: format!("{name:?} is not a valid MongoDB collection name"),
            });
        }
        self.collection = self.database.collection(name);
        Ok(self)
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The collection.
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// Creates the TTL index on `expires_at` if it does not exist.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let index = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("typed_session_expiry".to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        self.collection
            .create_index(index)
            .await
            .map_err(|e| StoreError::backend(BACKEND, StoreOp::Migrate, "", e))?;
        Ok(())
    }
}

fn now() -> bson::DateTime {
    bson::DateTime::from_millis(super::unix_ms())
}

fn malformed(key: &str, field: &str, message: impl Into<String>) -> StoreError {
    StoreError::Malformed {
        backend: BACKEND,
        key: key.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

/// JSON into BSON with the numbers kept exact: integers as Int32/Int64, others as Double.
fn to_bson(value: serde_json::Value) -> Result<Bson, String> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32),
            (None, _) if n.is_u64() => {
                return Err(format!("{n} does not fit BSON's signed 64-bit integer"));
            }
            (None, Some(f)) => Bson::Double(f),
            (None, None) => return Err(format!("{n} is not a number BSON can hold")),
        },
        Value::String(s) => Bson::String(s),
        Value::Array(items) => {
            Bson::Array(items.into_iter().map(to_bson).collect::<Result<_, _>>()?)
        }
        Value::Object(map) => {
            let mut document = Document::new();
            for (k, v) in map {
                document.insert(k, to_bson(v)?);
            }
            Bson::Document(document)
        }
    })
}

/// The versions a document holds, by field.
fn versions_of(document: &Document) -> std::collections::HashMap<String, u64> {
    versions_of_in(document, "versions")
}

/// The non-negative integers of sub-document `name`, by field.
fn versions_of_in(document: &Document, name: &str) -> std::collections::HashMap<String, u64> {
    let Ok(versions) = document.get_document(name) else {
        return std::collections::HashMap::new();
    };
    versions
        .iter()
        .filter_map(|(field, version)| {
            let version = match version {
                Bson::Int32(v) => u64::try_from(*v).ok(),
                Bson::Int64(v) => u64::try_from(*v).ok(),
                Bson::Double(v) if *v >= 0.0 => Some(*v as u64),
                _ => None,
            };
            Some((field.clone(), version?))
        })
        .collect()
}

/// Whether a document has not expired at `now`.
fn is_live(document: &Document, now: bson::DateTime) -> bool {
    document
        .get_datetime("expires_at")
        .map_or(true, |expires_at| *expires_at > now)
}

/// Where the version of `field` lives.
fn version_path(key: &str, field: &str) -> Result<String, StoreError> {
    field_path(key, field).map(|_| format!("versions.{field}"))
}

fn field_path(key: &str, field: &str) -> Result<String, StoreError> {
    if field.is_empty() || field.contains(['.', '\0']) || field.starts_with('$') {
        return Err(malformed(
            key,
            field,
            "field names cannot be empty, contain '.' or NUL, or start with '$' in MongoDB",
        ));
    }
    Ok(format!("data.{field}"))
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

impl MongoStore {
    /// The conflict of a refused patch: the fields whose stored version is not the expected
    /// one (an absent or expired document has none), with the record read.
    async fn conflict(&self, key: &str, patch: &Patch<'_>, now: bson::DateTime) -> StoreError {
        let current = match self.collection.find_one(doc! { "_id": key }).await {
            Ok(Some(document)) if is_live(&document, now) => match record_of(key, document) {
                Ok(record) => record,
                Err(error) => return error,
            },
            Ok(_) => Record::default(),
            Err(e) => return StoreError::backend(BACKEND, StoreOp::Apply, key, e),
        };
        let fields = patch
            .expect
            .iter()
            .filter(|(field, version)| current.version(field) != *version)
            .map(|(field, _)| (*field).to_owned())
            .collect();
        StoreError::Conflict {
            backend: BACKEND,
            key: key.to_owned(),
            fields,
            current: Some(Box::new(current)),
        }
    }
}

/// The record a live session document holds.
fn record_of(key: &str, document: Document) -> Result<Record, StoreError> {
    let data = match document.get("data") {
        Some(Bson::Document(data)) => data.clone(),
        None => Document::new(),
        Some(other) => {
            return Err(malformed(
                key,
                "data",
                format!("expected a document, found {other}"),
            ));
        }
    };
    let mut record: Record = data
        .into_iter()
        .map(|(field, value)| (field, value.into_relaxed_extjson().to_string()))
        .collect();
    record.versions = versions_of(&document);
    record.writers = versions_of_in(&document, "writers")
        .into_iter()
        .map(|(field, id)| (field, id as i64))
        .collect();
    Ok(record)
}

impl Store for MongoStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.timeout,
            StoreOp::Load,
            key,
            async move {
                let found = self
                    .collection
                    .find_one(doc! { "_id": key })
                    .await
                    .map_err(|e| StoreError::backend(BACKEND, StoreOp::Load, key, e))?;
                let Some(document) = found else {
                    return Ok(None);
                };
                // The TTL monitor runs about once a minute: an expired document may still be here.
                if !is_live(&document, now()) {
                    return Ok(None);
                }
                record_of(key, document).map(Some)
            },
        ))
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.timeout,
            StoreOp::Apply,
            key,
            async move {
                crate::store::check_size(BACKEND, patch)?;
                let mut set = Document::new();
                for (field, value) in &patch.set {
                    let json: serde_json::Value = serde_json::from_str(value)
                        .map_err(|e| malformed(key, field, format!("not JSON: {e}")))?;
                    set.insert(
                        field_path(key, field)?,
                        to_bson(json).map_err(|m| malformed(key, field, m))?,
                    );
                }
                let mut unset = Document::new();
                for field in &patch.remove {
                    unset.insert(field_path(key, field)?, "");
                }
                let mut inc = Document::new();
                for field in patch.written_fields() {
                    inc.insert(version_path(key, field)?, 1_i64);
                }
                for (field, writer) in &patch.writers {
                    set.insert(
                        format!(
                            "writers.{}",
                            field_path(key, field)?.trim_start_matches("data.")
                        ),
                        *writer,
                    );
                }
                let now = now();
                let expires_at = patch.ttl.map(|ttl| {
                    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
                    bson::DateTime::from_millis(now.timestamp_millis().saturating_add(ms))
                });
                if let Some(at) = expires_at {
                    set.insert("expires_at", at);
                }
                let mut update = Document::new();
                if !set.is_empty() {
                    update.insert("$set", set.clone());
                }
                if !unset.is_empty() {
                    update.insert("$unset", unset);
                }
                if !inc.is_empty() {
                    update.insert("$inc", inc);
                }
                if update.is_empty() {
                    return Ok(());
                }
                // Only a live document whose versions are the expected ones is patched. An expired
                // one still waiting for the TTL monitor counts as absent.
                let mut filter = doc! { "_id": key, "$or": [ { "expires_at": Bson::Null }, { "expires_at": { "$gt": now } } ] };
                for (field, version) in &patch.expect {
                    let path = version_path(key, field)?;
                    // Not `null`: an upsert copies the filter's equalities into the new document.
                    match i64::try_from(*version) {
                        Ok(0) => filter.insert(path, doc! { "$exists": false }),
                        Ok(version) => filter.insert(path, version),
                        Err(_) => return Err(malformed(key, field, "a version beyond i64")),
                    };
                }
                // A new document is created only when the patch expects nothing to be there,
                // and never by a patch that only renews the expiry.
                let renews = patch.only_renews();
                let may_create = !renews && patch.expect.iter().all(|(_, version)| *version == 0);
                let outcome = self
                    .collection
                    .update_one(filter, update)
                    .upsert(may_create)
                    .await;
                match outcome {
                    Ok(result)
                        if renews || result.matched_count > 0 || result.upserted_id.is_some() =>
                    {
                        Ok(())
                    }
                    Ok(_) => Err(self.conflict(key, patch, now).await),
                    Err(e) if is_duplicate_key(&e) => {
                        // A document is there: live (its versions differ) or expired (replaced).
                        let existing = self
                            .collection
                            .find_one(doc! { "_id": key })
                            .await
                            .map_err(|e| StoreError::backend(BACKEND, StoreOp::Apply, key, e))?;
                        if existing.as_ref().is_some_and(|d| is_live(d, now)) {
                            return Err(self.conflict(key, patch, now).await);
                        }
                        let mut data = Document::new();
                        for (path, value) in set {
                            if let Some(field) = path.strip_prefix("data.") {
                                data.insert(field, value);
                            }
                        }
                        let mut versions = Document::new();
                        for field in patch.written_fields() {
                            versions.insert(field, 1_i64);
                        }
                        let mut fresh = doc! { "_id": key, "data": data, "versions": versions };
                        if let Some(at) = expires_at {
                            fresh.insert("expires_at", at);
                        }
                        self.collection
                            .replace_one(doc! { "_id": key }, fresh)
                            .upsert(true)
                            .await
                            .map(|_| ())
                            .map_err(|e| StoreError::backend(BACKEND, StoreOp::Apply, key, e))
                    }
                    Err(e) => Err(StoreError::backend(BACKEND, StoreOp::Apply, key, e)),
                }
            },
        ))
    }

    /// One range query on `_id` (its own index) per page, in key order.
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.timeout,
            StoreOp::List,
            "",
            async move {
                let failed = |e| StoreError::backend(BACKEND, StoreOp::List, "", e);
                let mut range = match cursor.map(Cursor::as_str) {
                    Some(after) if after >= prefix => doc! { "$gt": after },
                    _ => doc! { "$gte": prefix },
                };
                if let Some(end) = super::prefix_end(prefix) {
                    range.insert("$lt", end);
                }
                let filter = doc! {
                    "_id": range,
                    "$or": [ { "expires_at": Bson::Null }, { "expires_at": { "$gt": now() } } ],
                };
                let read = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
                let mut found = self
                    .collection
                    .find(filter)
                    .sort(doc! { "_id": 1 })
                    .projection(doc! { "_id": 1 })
                    .limit(read)
                    .await
                    .map_err(failed)?;
                let mut keys = Vec::new();
                while found.advance().await.map_err(failed)? {
                    let document = found.deserialize_current().map_err(failed)?;
                    if let Ok(key) = document.get_str("_id") {
                        keys.push(key.to_owned());
                    }
                }
                Ok(page_of(keys, limit))
            },
        ))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(within(
            BACKEND,
            self.timeout,
            StoreOp::Delete,
            key,
            async move {
                self.collection
                    .delete_one(doc! { "_id": key })
                    .await
                    .map(|_| ())
                    .map_err(|e| StoreError::backend(BACKEND, StoreOp::Delete, key, e))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_exact_kind() {
        let json = serde_json::json!([1, -2_147_483_649_i64, 1.5, i64::MAX]);
        let Ok(Bson::Array(items)) = to_bson(json) else {
            panic!("an array");
        };
        assert_eq!(
            items,
            [
                Bson::Int32(1),
                Bson::Int64(-2_147_483_649),
                Bson::Double(1.5),
                Bson::Int64(i64::MAX)
            ]
        );
    }

    #[test]
    fn an_unsigned_integer_beyond_i64_is_an_error_not_a_rounded_double() {
        let error = to_bson(serde_json::json!(u64::MAX)).expect_err("does not fit");
        assert!(error.contains("18446744073709551615"), "{error}");
    }

    #[test]
    fn objects_and_strings_nest_as_documents() {
        let bson = to_bson(serde_json::json!({"a": {"b": "x\u{0}y"}, "n": null})).expect("ok");
        let mut inner = Document::new();
        inner.insert("b", "x\u{0}y");
        let mut outer = Document::new();
        outer.insert("a", inner);
        outer.insert("n", Bson::Null);
        assert_eq!(bson, Bson::Document(outer));
    }

    #[test]
    fn field_paths_refuse_what_mongo_would_read_as_a_path_or_operator() {
        assert_eq!(field_path("k", "lang").ok().as_deref(), Some("data.lang"));
        for bad in ["", "a.b", "$set", "a\0b"] {
            assert!(field_path("k", bad).is_err(), "{bad:?}");
        }
    }
}
