//! The [`Store`] trait and the stores that implement it.
//!
//! A store keeps one record per session key. A record is a map from stored field name to the
//! field's encoded value (JSON text). Stores work at field level: [`Store::apply`] writes only
//! the fields a [`Patch`] names and leaves every other stored field as it is, so two processes
//! that change different fields of one session never overwrite each other (ARCHITECTURE.md,
//! "Field-level patches").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use crate::error::DeadlineExceeded;
use crate::error::StoreError;

mod memory;
#[cfg(feature = "mongodb")]
mod mongodb;
pub(crate) mod record;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql;

#[cfg(feature = "mongodb")]
pub use self::mongodb::MongoStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use memory::MemoryStore;
pub use record::Record;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use sql::SqlOptions;
#[cfg(feature = "mysql")]
pub use sql::mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use sql::postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sql::sqlite::{Durability, Locking, SqliteStore};

/// Milliseconds since the Unix epoch, by the system clock (0 before 1970).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `call`'s answer, or a [`StoreError::Backend`] once it has waited `deadline`: how the stores
/// that talk to a server bound each call (ARCHITECTURE.md, "Deadlines").
#[cfg(any(
    feature = "redis",
    feature = "mongodb",
    feature = "postgres",
    feature = "mysql"
))]
pub(crate) async fn within<T>(
    backend: &'static str,
    deadline: Duration,
    op: crate::error::StoreOp,
    key: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::backend(
                backend,
                op,
                key,
                DeadlineExceeded::new(backend, deadline),
            ))
        })
}

/// The most fields one patch may write (set and removed together), in every store: SQLite
/// binds a few parameters per field and allows 32,766 per statement; the derive refuses a
/// session type with more stored fields than this.
pub const MAX_PATCH_FIELDS: usize = 1_000;

/// The error every store returns for a patch of more than [`MAX_PATCH_FIELDS`] fields.
pub(crate) fn check_size(backend: &'static str, patch: &Patch<'_>) -> Result<(), StoreError> {
    let fields = patch.set.len() + patch.remove.len();
    if fields > MAX_PATCH_FIELDS {
        return Err(StoreError::Config {
            backend,
            message: format!(
                "a patch writes at most {MAX_PATCH_FIELDS} fields; this one writes {fields}"
            ),
        });
    }
    Ok(())
}

/// What the [`Store`] methods return: a value that is already there, or a boxed future.
///
/// A store that answers without waiting (memory, a cache hit) returns
/// [`StoreFuture::ready`] and costs no allocation; one that does I/O wraps its `async` block
/// in [`StoreFuture::new`].
///
/// # Example
///
/// A store that logs every write and delegates to another:
///
/// ```
/// use typed_session::store::{Patch, Record, StoreFuture};
/// use typed_session::{MemoryStore, Store, StoreError};
///
/// struct Logged<S>(S);
///
/// impl<S: Store> Store for Logged<S> {
///     fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
///         self.0.load(key)
///     }
///
///     fn apply<'a>(&'a self, key: &'a str, patch: &'a Patch<'a>) -> StoreFuture<'a, Result<(), StoreError>> {
///         StoreFuture::new(async move {
///             println!("{key}: {} bytes", patch.bytes());
///             self.0.apply(key, patch).await
///         })
///     }
///
///     fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
///         self.0.delete(key)
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Logged(MemoryStore::new());
/// store.apply("1:1", &Patch::new().set_field("count", "1")).await?;
/// # Ok::<(), StoreError>(())
/// # }).unwrap();
/// ```
pub struct StoreFuture<'a, T>(Answer<'a, T>);

enum Answer<'a, T> {
    Ready(Option<T>),
    Pending(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<T> std::fmt::Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            Answer::Ready(Some(_)) => "ready",
            Answer::Ready(None) => "done",
            Answer::Pending(_) => "pending",
        };
        f.debug_tuple("StoreFuture").field(&state).finish()
    }
}

impl<'a, T> StoreFuture<'a, T> {
    /// An answer that is already known.
    pub fn ready(value: T) -> Self {
        StoreFuture(Answer::Ready(Some(value)))
    }

    /// An answer that needs I/O.
    pub fn new(future: impl Future<Output = T> + Send + 'a) -> Self {
        StoreFuture(Answer::Pending(Box::pin(future)))
    }
}

// The value is moved out, never pinned in place, so the future can be `Unpin` for every `T`
// (as `std::future::Ready` is).
impl<T> Unpin for StoreFuture<'_, T> {}

impl<T> Future for StoreFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match &mut self.get_mut().0 {
            Answer::Ready(value) => {
                std::task::Poll::Ready(value.take().expect("StoreFuture polled after it completed"))
            }
            Answer::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// The changes one save writes: fields to set, fields to remove, and the expiry.
///
/// Fields the patch does not name are left untouched in the store. Stores read its fields;
/// it is built with [`Patch::new`] and the `*_field` methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Patch<'a> {
    /// Fields to set, with their encoded values.
    pub set: Vec<(&'a str, String)>,
    /// Fields to remove.
    pub remove: Vec<&'a str>,
    /// When `Some`, the whole record expires this long after the write (sliding on write).
    /// When `None`, the record's expiry is left as it is.
    pub ttl: Option<Duration>,
    /// The version each of these fields must have in the store for the patch to apply (what
    /// the writer based it on; 0: never written). If any differs, nothing is written and
    /// [`Store::apply`] returns [`StoreError::Conflict`] naming them. Fields without an
    /// expectation are written whatever their version. A field expected and not written (one
    /// the writer only read) is a condition only: its value and version stay as they are.
    pub expect: Vec<(&'a str, u64)>,
    /// The update that wrote each of these fields, stored as its writer (fields without one
    /// keep the writer they had). A store records every name given here, also one the patch
    /// does not set or remove: the runtime keeps its window of recent update ids that way,
    /// under names starting with `@`.
    pub writers: Vec<(&'a str, i64)>,
}

impl<'a> Patch<'a> {
    /// A patch that changes nothing and leaves the expiry as it is.
    pub fn new() -> Self {
        Patch::default()
    }

    /// Adds a field to set to `value` (encoded, JSON text).
    pub fn set_field(mut self, field: &'a str, value: impl Into<String>) -> Self {
        self.set.push((field, value.into()));
        self
    }

    /// Adds a field to remove.
    pub fn remove_field(mut self, field: &'a str) -> Self {
        self.remove.push(field);
        self
    }

    /// Makes the patch conditional: it applies only if `field` has `version` in the store.
    pub fn expect_version(mut self, field: &'a str, version: u64) -> Self {
        self.expect.push((field, version));
        self
    }

    /// Records `update` as the writer of `field`.
    pub fn written_by(mut self, field: &'a str, update: i64) -> Self {
        self.writers.push((field, update));
        self
    }

    /// Sets the expiry the write renews (`None`: the record's expiry is left as it is).
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Whether the patch does nothing but renew the record's expiry: it sets, removes, records
    /// and expects nothing. A store applies such a patch to a live record only (see
    /// [`Store::apply`]); the runtime sends one when a read renews a session's expiry.
    pub fn only_renews(&self) -> bool {
        self.is_empty() && self.writers.is_empty() && self.expect.is_empty()
    }

    /// The name of every field the patch writes: those it sets, then those it removes (each
    /// write adds one to the field's version).
    pub fn written_fields(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.set
            .iter()
            .map(|(field, _)| *field)
            .chain(self.remove.iter().copied())
    }

    /// Whether the patch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// The number of bytes of field names and values the patch writes.
    pub fn bytes(&self) -> usize {
        let set: usize = self.set.iter().map(|(k, v)| k.len() + v.len()).sum();
        let remove: usize = self.remove.iter().map(|k| k.len()).sum();
        set + remove
    }
}

/// Where the record of a key stands in its history, as [`Store::revision`] tells it: how live
/// sessions learn, without a load, that what they decoded is still what the store holds
/// (ARCHITECTURE.md, "Decoded between updates").
///
/// # Example
///
/// ```
/// use typed_session::store::{Patch, Revision};
/// use typed_session::{MemoryStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// assert_eq!(store.revision("1:1"), Revision::Absent);
/// store.apply("1:1", &Patch::new().set_field("count", "1")).await?;
/// let created = store.revision("1:1");
/// store.apply("1:1", &Patch::new().set_field("count", "2")).await?;
/// assert!(store.revision("1:1").follows(created));
/// # Ok::<(), typed_session::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Revision {
    /// The store cannot tell without a round trip (every store but [`MemoryStore`] and
    /// `SqliteStore`, and SQLite for a record its connection has not
    /// read since another connection committed).
    #[default]
    Unknown,
    /// The key has no record (never written, deleted, or expired).
    Absent,
    /// The record after `writes` successful applies since the one that created it. `life`
    /// tells it apart from every earlier record of the key: a record created anew, after a
    /// delete or an expiry, has a `life` no earlier one had.
    At {
        /// Which record of the key this is.
        life: u64,
        /// The applies since it was created.
        writes: u64,
    },
}

impl Revision {
    /// Whether `self` is what exactly one successful apply makes of `before`: one more write
    /// of the same record, or the first of a new one where there was none.
    pub fn follows(self, before: Revision) -> bool {
        match (before, self) {
            (Revision::At { life, writes }, Revision::At { life: l, writes: w }) => {
                l == life && Some(w) == writes.checked_add(1)
            }
            (Revision::Absent, Revision::At { writes, .. }) => writes == 0,
            _ => false,
        }
    }

    /// Whether the store told anything.
    pub fn is_known(self) -> bool {
        self != Revision::Unknown
    }
}

/// Where a walk over a store's keys stands: what [`Store::keys`] returns with a page, to be
/// passed back for the next one.
///
/// Its text is the store's own (the last key listed, or a scan position) and means something
/// only to the store that returned it, for the same prefix. It can be printed and read back
/// ([`Cursor::new`]), so a walk can continue in another process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor from the text of one a store returned.
    pub fn new(text: impl Into<String>) -> Self {
        Cursor(text.into())
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of a walk over a store's keys ([`Store::keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// The keys of this page, in the store's order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when the walk is over.
    pub next: Option<Cursor>,
}

/// The least string that is greater than every string starting with `prefix` (by code point,
/// which is also the byte order of UTF-8), or `None` when there is none (an empty prefix, or one
/// of `char::MAX` only): the end of a key range scan.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mongodb")),
    allow(dead_code)
)]
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut end: Vec<char> = prefix.chars().collect();
    while let Some(last) = end.pop() {
        // The next scalar value, stepping over the surrogates.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            end.push(next);
            return Some(end.into_iter().collect());
        }
    }
    None
}

/// A key a listing read back as bytes (a `BYTEA` or binary column, a Redis key), as a string.
#[cfg(any(feature = "redis", feature = "postgres", feature = "mysql"))]
pub(crate) fn listed_key(backend: &'static str, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| StoreError::Malformed {
        backend,
        key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        field: String::new(),
        message: "the stored key is not UTF-8".to_owned(),
    })
}

/// A page of at most `limit` keys from the `limit + 1` a query read: the extra one says that
/// the walk goes on, from the page's last key.
pub(crate) fn page_of(mut keys: Vec<String>, limit: usize) -> Page {
    let next = if keys.len() > limit {
        keys.truncate(limit);
        keys.last().cloned().map(Cursor::new)
    } else {
        None
    };
    Page { keys, next }
}

/// Where sessions live between updates.
///
/// Object safe and async: every method returns a [`StoreFuture`]. Each method is one round trip
/// to the backend. A read error is an error, never an empty record: an outage must not look
/// like a new user (ARCHITECTURE.md, "The store contract").
///
/// # Example
///
/// ```
/// use typed_session::store::Patch;
/// use typed_session::{MemoryStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let patch = Patch::new().set_field("count", "1");
/// store.apply("42:42", &patch).await?;
/// let record = store.load("42:42").await?.expect("just written");
/// assert_eq!(record["count"], "1");
/// # Ok::<(), typed_session::StoreError>(())
/// # }).unwrap();
/// ```
pub trait Store: Send + Sync + 'static {
    /// Reads the record of `key`; `Ok(None)` when there is none (or it has expired).
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>>;

    /// Sets and removes the fields `patch` names, creating the record if needed, adds one to
    /// the version of each, and applies its expiry, all at once, and only if every field
    /// `patch.expect` names has the version it expects (otherwise nothing is written and the
    /// result is [`StoreError::Conflict`]). Fields the patch does not name stay as they are.
    ///
    /// A patch that [only renews](Patch::only_renews) the expiry (it sets, removes, records
    /// and expects nothing) renews it on a live record and does nothing otherwise: it never
    /// creates a record, nor brings back one that expired or was deleted.
    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>>;

    /// Removes the whole record of `key`; removing a missing record is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>>;

    /// Lists the keys that start with `prefix`, a page at a time: the keys after `cursor`
    /// (`None`: from the start of the walk), about `limit` of them, and the cursor of the next
    /// page (`None`: the walk is over).
    ///
    /// A key whose record exists for the whole walk is listed at least once; one written or
    /// deleted during the walk may be listed or not. Expired records are not listed. Each page
    /// is one bounded query, so a walk over millions of sessions holds one page in memory.
    /// Ordered stores (memory, SQL, MongoDB) list in key order and never more than `limit`
    /// keys a page; Redis follows `SCAN`, whose pages may hold a few more.
    ///
    /// Stores that cannot list (the default for a store of your own) return
    /// [`StoreError::Unsupported`].
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        let _ = (prefix, cursor, limit);
        StoreFuture::ready(Err(StoreError::Unsupported {
            operation: "list its keys",
        }))
    }

    /// Whether [`load`](Store::load) returns each field's value as the exact text
    /// [`apply`](Store::apply) was given. Stores that normalise JSON (PostgreSQL `jsonb`, MySQL
    /// `JSON`, BSON) return `false`, and the runtime re-encodes what they load so that an
    /// unchanged value is recognised as unchanged.
    fn returns_written_text(&self) -> bool {
        false
    }

    /// Whether a record [`load`](Store::load) returns is as safe as an acknowledged write
    /// (default `true`). A store that acknowledges a write only once replicas have it
    /// (`RedisStore::wait_for_replicas`) returns
    /// `false`: a read may return a write the replicas do not have yet. The runtime then
    /// acknowledges an update it finds saved by reading (a delivery again of an update saved
    /// before, a save whose answer was lost) only after a write of its own to the record
    /// succeeds: a replica that has that write has every earlier one of the record.
    fn reads_are_durable(&self) -> bool {
        true
    }

    /// Where the record of `key` stands ([`Revision`]), if the store can tell at once, without
    /// a round trip to a server; [`Revision::Unknown`] otherwise (the default). It is asked
    /// under the middleware's lock on its sessions: it must not wait.
    ///
    /// A store that tells promises that every successful [`apply`](Store::apply) to a record
    /// adds one to its `writes` (a renewal too), that one creating a record starts it at 0
    /// with a `life` the key never had, that nothing else changes a record without changing
    /// its revision, and that an expired record is [`Revision::Absent`]. The runtime then
    /// keeps a session decoded between updates and skips the load while the revision is the
    /// one it last saw.
    fn revision(&self, key: &str) -> Revision {
        let _ = key;
        Revision::Unknown
    }

    /// The revision the last successful [`apply`](Store::apply) of `key` through this store
    /// made, asked right after it (default: [`revision`](Store::revision)).
    ///
    /// A store whose `revision` costs a check of its own (`SqliteStore` asks the database
    /// whether another connection committed) may tell this one from what it knew when the
    /// apply began. If another writer had changed the record before the apply,
    /// the revision told here is then one [`revision`](Store::revision) never tells: the
    /// runtime, which compares the two before it uses a session it kept, reads the record
    /// again.
    fn applied_revision(&self, key: &str) -> Revision {
        self.revision(key)
    }

    /// [`load`](Store::load), and the [`Revision`] of the record it read: known only if the
    /// store can tell that no write came between the read and the revision told.
    ///
    /// The default asks [`revision`](Store::revision) before and after the load, and tells it
    /// when both agree. A store that knows the revision of what it reads, under the same lock,
    /// overrides it: `SqliteStore` learns a record's revision by reading it, so the revision
    /// before the first read of a key is unknown, and the default would tell nothing until the
    /// key is read again.
    fn load_with_revision<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<(Option<Record>, Revision), StoreError>> {
        let before = self.revision(key);
        let load = self.load(key);
        StoreFuture::new(async move {
            let record = load.await?;
            let after = self.revision(key);
            let revision = if before == after {
                after
            } else {
                Revision::Unknown
            };
            Ok((record, revision))
        })
    }
}

impl<T: Store + ?Sized> Store for Arc<T> {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        (**self).load(key)
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        (**self).apply(key, patch)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        (**self).delete(key)
    }

    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        (**self).keys(prefix, cursor, limit)
    }

    fn returns_written_text(&self) -> bool {
        (**self).returns_written_text()
    }

    fn reads_are_durable(&self) -> bool {
        (**self).reads_are_durable()
    }

    fn revision(&self, key: &str) -> Revision {
        (**self).revision(key)
    }

    fn applied_revision(&self, key: &str) -> Revision {
        (**self).applied_revision(key)
    }

    fn load_with_revision<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<(Option<Record>, Revision), StoreError>> {
        (**self).load_with_revision(key)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_end_of_a_prefix_range_is_the_next_string_past_every_key_that_starts_with_it() {
        assert_eq!(prefix_end("Cart:42:").as_deref(), Some("Cart:42;"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_end("b\u{10ffff}").as_deref(), Some("c"));
        assert_eq!(prefix_end("\u{10ffff}"), None);
        let end = prefix_end("k\u{7f}").expect("an end");
        for key in ["k\u{7f}", "k\u{7f}\u{10ffff}\u{10ffff}", "k\u{7f}zz"] {
            assert!(
                key < end.as_str() && key.as_bytes() < end.as_bytes(),
                "{key:?}"
            );
        }
    }
}
