//! Errors at the runtime's boundaries: [`StoreError`] for what a store reports, [`SessionError`]
//! for what a bot sees. Every message names the session type, the key and, where there is one,
//! the field.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::schema::MigrationError;
use crate::store::record::Record;

/// The error type middlewares return: anything `Send + Sync` that is an error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a store was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// Reading a record.
    Load,
    /// Writing a patch.
    Apply,
    /// Deleting a record.
    Delete,
    /// Creating tables, collections or indexes.
    Migrate,
    /// Removing expired records.
    Sweep,
    /// Listing keys.
    List,
    /// Connecting to the backend.
    Connect,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOp::Load => "load",
            StoreOp::Apply => "apply a patch to",
            StoreOp::Delete => "delete",
            StoreOp::Migrate => "migrate",
            StoreOp::Sweep => "sweep",
            StoreOp::List => "list keys",
            StoreOp::Connect => "connect",
        })
    }
}

/// " session \"{key}\"", or nothing for an operation on no single key (connect, migrate).
fn on_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" session {key:?}")
    }
}

/// " field \"{field}\"", or what an empty field name means: the whole record.
fn which_part(field: &str) -> String {
    if field.is_empty() {
        ", the whole record,".to_owned()
    } else {
        format!(" field {field:?}")
    }
}

/// An error reported by a [`Store`](crate::Store).
///
/// A store never turns a failed read into "no session": an outage is an error, not a new user
/// (ARCHITECTURE.md, "The store contract").
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (I/O, protocol, server error).
    #[error("{backend} store: cannot {op}{}: {source}", on_key(key))]
    Backend {
        /// Which store, e.g. `"memory"` or `"postgres"`.
        backend: &'static str,
        /// The operation that failed.
        op: StoreOp,
        /// The session key, or `""` for operations on no single key.
        key: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// The backend holds something this store cannot read as a session record.
    #[error(
        "{backend} store: session {key:?}{} is malformed: {message}",
        which_part(field)
    )]
    Malformed {
        /// Which store.
        backend: &'static str,
        /// The session key.
        key: String,
        /// The stored field name, or `""` when the whole record is malformed.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A conditional patch was refused: these fields no longer have the version the writer
    /// based it on (another writer changed them). Nothing was written.
    #[error(
        "{backend} store: session {key:?} changed under the write: fields {fields:?} have newer versions"
    )]
    Conflict {
        /// Which store.
        backend: &'static str,
        /// The session key.
        key: String,
        /// The stored names of the fields whose version differed.
        fields: Vec<String>,
        /// The record as the store held it when it refused the patch (an empty one when it
        /// held none), where the store read it in the same call, as every store of this crate
        /// does; `None` otherwise. The runtime takes it as the session's new state instead of
        /// loading the record again.
        current: Option<Box<Record>>,
    },
    /// The store does not do this operation (a store of your own that does not list its
    /// keys, say).
    #[error("this store cannot {operation}")]
    Unsupported {
        /// What it cannot do, e.g. `"list its keys"`.
        operation: &'static str,
    },
    /// The store was configured with something it cannot use (a table name, a URL).
    #[error("{backend} store: invalid configuration: {message}")]
    Config {
        /// Which store.
        backend: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// Which store reported it, e.g. `"memory"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            StoreError::Backend { backend, .. }
            | StoreError::Malformed { backend, .. }
            | StoreError::Conflict { backend, .. }
            | StoreError::Config { backend, .. } => backend,
            StoreError::Unsupported { .. } => "custom",
        }
    }

    /// Whether the store gave up on the call because its deadline passed (the backend did not
    /// answer in time), rather than because the backend answered with an error.
    pub fn is_deadline(&self) -> bool {
        match self {
            StoreError::Backend { source, .. } => {
                source.downcast_ref::<DeadlineExceeded>().is_some()
            }
            _ => false,
        }
    }

    /// Shorthand for [`StoreError::Backend`].
    pub fn backend(
        backend: &'static str,
        op: StoreOp,
        key: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        StoreError::Backend {
            backend,
            op,
            key: key.into(),
            source: source.into(),
        }
    }
}

/// An error a bot sees when it uses a session.
///
/// It converts into [`BoxError`] with `?` inside middlewares, and can be downcast back.
///
/// # Example
///
/// ```
/// use typed_session::telegram::Update;
/// use typed_session::{Chain, MemoryStore, Session, SessionError, SessionMiddleware};
///
/// #[derive(Session)]
/// struct Visits {
///     count: u64,
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let chain = Chain::new()
///     .with(SessionMiddleware::<Visits, Update>::new(MemoryStore::new()))
///     .handler(|ctx| Box::pin(async move {
///         match ctx.session().await {
///             Ok(visits) => visits.update_count(|c| *c += 1),
///             // A channel post has no sender, so no "{from.id}:{chat.id}" key.
///             Err(SessionError::NoKey { .. }) => {}
///             Err(other) => return Err(other.into()),
///         }
///         Ok(())
///     }));
/// chain.run_update(Update::channel_post(1, -100, "news")).await?;
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The update carries no session key (a channel post for a per-user session, an inline
    /// query for a per-chat one). Nothing is loaded and nothing can be written for it.
    #[error(
        "session `{session}` is unavailable: this update (or request) has no session key under the `{strategy}` key"
    )]
    NoKey {
        /// The session type.
        session: &'static str,
        /// The key strategy that found no key.
        strategy: &'static str,
    },
    /// No middleware for this session type ran before this point of the chain.
    #[error(
        "session `{session}` is not attached to this context: add its SessionMiddleware to the chain before the middleware that uses it"
    )]
    NotAttached {
        /// The session type.
        session: &'static str,
    },
    /// The session was asked for after its middleware had saved it (Telegraf's "session
    /// accessed after the middleware chain exhausted").
    #[error(
        "session `{session}` of key {key:?} was used after its update (or request) was saved; a write now would be lost"
    )]
    AfterSave {
        /// The session type.
        session: &'static str,
        /// The session key, empty if the update had none.
        key: SessionKey,
    },
    /// The store could not read the session.
    #[error("cannot load session `{session}` of key {key:?}: {source}")]
    Load {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The store's error.
        #[source]
        source: Box<StoreError>,
    },
    /// A stored field could not be decoded into its Rust type.
    #[error(
        "cannot decode stored field {field:?} of session `{session}` key {key:?}: {source} (mark the field #[session(reset_on_error)] to fall back to its default)"
    )]
    Decode {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The stored field name.
        field: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record could not be migrated to the session type's version (see
    /// [`schema::Migration`](crate::schema::Migration)). Nothing was loaded or written.
    #[error("cannot migrate session `{session}` key {key:?} from version {version}: {source}")]
    Migrate {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The version the failing step migrates from.
        version: u32,
        /// The field it failed on, and why.
        #[source]
        source: Box<MigrationError>,
    },
    /// A field could not be encoded (serde_json rejects, for example, maps with non-string keys).
    #[error("cannot encode field {field:?} of session `{session}` key {key:?}: {source}")]
    Encode {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The stored field name.
        field: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the session failed. The changed fields stay dirty, so the next update of the
    /// same key writes them again. If the chain had failed too, its error is kept beside this
    /// one: neither hides the other.
    #[error("cannot save session `{session}` of key {key:?}: {source}{}", ChainSuffix(.chain.as_ref()))]
    Save {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The store's error.
        #[source]
        source: Box<StoreError>,
        /// The chain's own error, when the chain failed as well.
        chain: Option<BoxError>,
    },
    /// In strict mode, a `set_*` overwrote a value another update wrote after this update read
    /// it. Use `update_*` for read-modify-write.
    #[error(
        "stale write to field {field:?} of session `{session}` key {key:?}: another update changed it after this one read it; use update_{field}(..) to read and write atomically"
    )]
    StaleWrite {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The stored field name.
        field: &'static str,
    },
    /// Another writer (another process, an admin tool) changed these fields after this
    /// session was read: this update's writes to them were not saved, and the session now
    /// holds the newer values. Run the update again (a webhook answers with an error status,
    /// so Telegram delivers it again).
    #[error(
        "session `{session}` key {key:?} was changed by another writer (fields {fields:?}); the writes to them of this update (or request) were not saved: run it again"
    )]
    Conflict {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// The stored names of the fields in conflict.
        fields: Vec<&'static str>,
    },
    /// In exclusive mode, another update of the same key kept it longer than the middleware
    /// waits for its turn.
    #[error(
        "session `{session}` key {key:?} stayed busy with another update (or request) for {waited:?}; try again later"
    )]
    Busy {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// How long this update waited.
        waited: std::time::Duration,
    },
    /// In exclusive mode across processes, this process's lease on the key ran out (the
    /// process was paused or the store was slow) or another process took it over before the
    /// save: nothing of this update was written. Run it again.
    #[error(
        "session `{session}` key {key:?}: this process's lease on the key ran out or was taken over before the save; nothing was written: run the update (or request) again"
    )]
    LeaseLost {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
    },
    /// The chain panicked or its future was dropped before it finished.
    #[error("the chain for session `{session}` key {key:?} was {how} before it finished")]
    Interrupted {
        /// The session type.
        session: &'static str,
        /// The session key.
        key: SessionKey,
        /// `"panicking"` or `"cancelled"`.
        how: &'static str,
    },
}

impl SessionError {
    /// The chain's own error carried by [`SessionError::Save`], if any.
    pub fn chain_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            SessionError::Save { chain, .. } => chain.as_deref(),
            _ => None,
        }
    }
}

/// A session's key, as the key strategy made it (without the session type's namespace, which
/// the store puts before it): what a [`SessionError`] names. It reads as the `&str` it holds,
/// and cloning it is cheap.
///
/// ```
/// use typed_session::SessionKey;
///
/// let key = SessionKey::from("7:-100");
/// assert_eq!(key, "7:-100");
/// assert!(key.starts_with("7:"));
/// assert_eq!(format!("{key:?}"), "\"7:-100\"");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionKey(Option<Arc<str>>);

impl SessionKey {
    /// The key of `stored`, a key as the store holds it: what follows `namespace` and `:`.
    pub(crate) fn of_stored(stored: &str, namespace: &str) -> Self {
        SessionKey::from(without_namespace(stored, namespace))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or_default()
    }
}

/// What follows `namespace` and `:` in `stored`, a key as the store holds it; all of it when it
/// is not under the namespace (a store of one's own).
pub(crate) fn without_namespace<'a>(stored: &'a str, namespace: &str) -> &'a str {
    stored
        .strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(stored)
}

impl From<&str> for SessionKey {
    fn from(key: &str) -> Self {
        SessionKey((!key.is_empty()).then(|| Arc::from(key)))
    }
}

impl From<String> for SessionKey {
    fn from(key: String) -> Self {
        SessionKey::from(key.as_str())
    }
}

impl Deref for SessionKey {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SessionKey {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for SessionKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for SessionKey {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SessionKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SessionKey {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

/// What [`SessionMiddleware::flush`](crate::SessionMiddleware::flush) could not save: how
/// many sessions are still unsaved, and the error of the first.
#[derive(Debug, Error)]
#[error("{unsaved} session(s) still unsaved; the first: {first}")]
pub struct FlushError {
    unsaved: usize,
    #[source]
    first: SessionError,
}

impl FlushError {
    pub(crate) fn new(unsaved: usize, first: SessionError) -> Self {
        FlushError { unsaved, first }
    }

    /// How many sessions are still unsaved (each is tried again by the next update of its key
    /// or the next flush).
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// The error of the first session that could not be saved.
    pub fn first(&self) -> &SessionError {
        &self.first
    }

    /// The error of the first session that could not be saved, owned.
    pub fn into_first(self) -> SessionError {
        self.first
    }
}

struct ChainSuffix<'a>(Option<&'a BoxError>);

impl fmt::Display for ChainSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(chain) => write!(f, "; the chain had failed as well: {chain}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SessionError, SessionKey, StoreError, StoreOp};

    #[test]
    fn a_session_error_is_small_enough_to_return_by_value() {
        // Every `Result` a handler's `?` passes on carries one: the big parts (a store's
        // error, a migration's) are boxed, keys are shared.
        assert_eq!(size_of::<SessionKey>(), 16);
        assert!(
            size_of::<SessionError>() <= 64,
            "SessionError is {} bytes",
            size_of::<SessionError>()
        );
    }

    #[test]
    fn a_session_key_is_read_without_the_namespace_and_compares_as_a_string() {
        let key = SessionKey::of_stored("Cart:7:-100", "Cart");
        assert_eq!(key, "7:-100");
        assert_eq!(key, String::from("7:-100"));
        assert_eq!(format!("{key} {key:?}"), "7:-100 \"7:-100\"");
        // A key not under the namespace (a store of one's own) is kept whole.
        assert_eq!(SessionKey::of_stored("other:1", "Cart"), "other:1");
        assert_eq!(SessionKey::default(), "");
        assert_eq!(SessionKey::from(""), SessionKey::default());
    }

    #[test]
    fn messages_name_the_session_and_field_or_say_there_is_none() {
        let whole = StoreError::Malformed {
            backend: "sqlite",
            key: "7:7".into(),
            field: String::new(),
            message: "not a JSON object".into(),
        };
        assert_eq!(
            whole.to_string(),
            "sqlite store: session \"7:7\", the whole record, is malformed: not a JSON object"
        );
        let field = StoreError::Malformed {
            backend: "redis",
            key: "7:7".into(),
            field: "count".into(),
            message: "bad".into(),
        };
        assert_eq!(
            field.to_string(),
            "redis store: session \"7:7\" field \"count\" is malformed: bad"
        );
        let connect = StoreError::backend("redis", StoreOp::Connect, "", "refused");
        assert_eq!(connect.to_string(), "redis store: cannot connect: refused");
        assert_eq!(connect.backend_name(), "redis");
    }
}

/// The source of a [`StoreError::Backend`] for a call that got no answer within the store's
/// deadline ([`StoreError::is_deadline`] finds it).
#[derive(Debug, Clone, Error)]
#[error("no answer from {backend} within {deadline:?}")]
pub struct DeadlineExceeded {
    backend: &'static str,
    deadline: Duration,
}

impl DeadlineExceeded {
    /// The source a store of one's own gives a call it stopped waiting for after `deadline`.
    /// The runtime takes such a write as one the store may have applied: it sends it once
    /// more, and the record then says which of the two applied (ARCHITECTURE.md, "Exactly
    /// once").
    ///
    /// ```
    /// use std::time::Duration;
    /// use typed_session::store::DeadlineExceeded;
    /// use typed_session::{StoreError, StoreOp};
    ///
    /// let error = StoreError::backend(
    ///     "mine",
    ///     StoreOp::Apply,
    ///     "Cart:1:1",
    ///     DeadlineExceeded::new("mine", Duration::from_secs(2)),
    /// );
    /// assert!(error.is_deadline());
    /// ```
    pub fn new(backend: &'static str, deadline: Duration) -> Self {
        DeadlineExceeded { backend, deadline }
    }
}
