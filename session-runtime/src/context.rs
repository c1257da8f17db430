//! The per-update context: the update, the sessions attached to it, and the webhook reply.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

type Attached = Arc<dyn Any + Send + Sync>;

/// What every middleware of a [`Chain`](crate::Chain) receives for one update.
///
/// Session types attach themselves through their [`SessionMiddleware`](crate::SessionMiddleware);
/// the derive's accessor (`ctx.session()`) then returns the typed handle.
///
/// # Example
///
/// ```
/// use typed_session::telegram::Update;
/// use typed_session::{Chain, Context, MemoryStore, Session, SessionMiddleware};
///
/// #[derive(Session)]
/// struct Visits {
///     count: u64,
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let chain = Chain::new().with(SessionMiddleware::<Visits, Update>::new(MemoryStore::new()));
/// // Run the chain on a context you built, to look at the update afterwards.
/// let ctx = Context::new(Update::text(1, 7, 7, "hi"));
/// chain.run(&ctx).await?;
/// assert_eq!(ctx.update().text_of(), Some("hi"));
/// // The chain is over: the session was saved, and asking for it now is an error.
/// assert!(ctx.session().await.is_err());
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
pub struct Context<U> {
    update: U,
    /// The first value attached (most chains have one session), without a heap allocation.
    first: OnceLock<(TypeId, Attached)>,
    /// Any further ones, newest last.
    more: Mutex<Vec<(TypeId, Attached)>>,
    /// A Bot API method to send back as the webhook's HTTP response.
    reply: Mutex<Option<serde_json::Value>>,
    /// A session of this update could not be saved (whatever the chain made of the error).
    unsaved: AtomicBool,
    /// Writes of this update were discarded after a conflict: it must run again.
    retry: AtomicBool,
    /// A session was asked for and the update has no key for it.
    keyless: AtomicBool,
}

impl<U: fmt::Debug> fmt::Debug for Context<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("update", &self.update)
            .field("reply", &*self.reply.lock())
            .finish_non_exhaustive()
    }
}

impl<U> Context<U> {
    /// A context for `update`, with no session attached.
    pub fn new(update: U) -> Self {
        Context {
            update,
            first: OnceLock::new(),
            more: Mutex::new(Vec::new()),
            reply: Mutex::new(None),
            unsaved: AtomicBool::new(false),
            retry: AtomicBool::new(false),
            keyless: AtomicBool::new(false),
        }
    }

    /// The update being handled.
    pub fn update(&self) -> &U {
        &self.update
    }

    /// Gives the update back.
    pub fn into_update(self) -> U {
        self.update
    }

    /// Asks for `method` (a Bot API call as JSON, e.g.
    /// `{"method": "sendMessage", "chat_id": 42, "text": "hi"}`) to be sent back as the
    /// webhook's HTTP response: Telegram performs it without a separate API request. The
    /// webhook server sends it only after every session of the update is saved. A later
    /// call replaces an earlier one.
    pub fn reply_with(&self, method: serde_json::Value) {
        *self.reply.lock() = Some(method);
    }

    /// Takes the reply set with [`reply_with`](Self::reply_with), if any.
    pub fn take_reply(&self) -> Option<serde_json::Value> {
        self.reply.lock().take()
    }

    /// Whether a session of this update could not be saved. It stays live and is written by
    /// the next update of its key or by [`Chain::flush`](crate::Chain::flush); the update
    /// should be retried rather than confirmed. True even if a middleware swallowed the error.
    pub fn has_unsaved_session(&self) -> bool {
        self.unsaved.load(Ordering::Acquire)
    }

    pub(crate) fn mark_unsaved(&self) {
        self.unsaved.store(true, Ordering::Release);
    }

    /// Whether writes of this update were discarded because another writer (another process,
    /// an admin tool) had changed those fields since they were read
    /// ([`SessionError::Conflict`](crate::SessionError::Conflict)). The sessions now hold the
    /// newer values; the update should run again (on a fresh context) to be applied. True even
    /// if a middleware swallowed the error.
    pub fn must_retry(&self) -> bool {
        self.retry.load(Ordering::Acquire)
    }

    pub(crate) fn mark_retry(&self) {
        self.retry.store(true, Ordering::Release);
    }

    /// Whether a handler asked for a session this update has no key for
    /// ([`SessionError::NoKey`](crate::SessionError::NoKey): a channel post has no sender, a
    /// poll neither sender nor chat). Running such an update again fails the same way, so a
    /// runner should not ask for it again; the webhook answers it with its `keyless_status`.
    pub fn lacked_session_key(&self) -> bool {
        self.keyless.load(Ordering::Acquire)
    }

    pub(crate) fn mark_keyless(&self) {
        self.keyless.store(true, Ordering::Release);
    }

    /// Attaches `value`, found again by its type with [`attached`](Self::attached).
    pub(crate) fn attach<T: Any + Send + Sync>(&self, value: Arc<T>) {
        let entry: (TypeId, Attached) = (TypeId::of::<T>(), value);
        if let Err(entry) = self.first.set(entry) {
            self.more.lock().push(entry);
        }
    }

    /// The newest value of type `T` attached: a session middleware nested in another of the
    /// same session type wins.
    pub(crate) fn attached<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let wanted = TypeId::of::<T>();
        let newer = {
            let more = self.more.lock();
            more.iter()
                .rev()
                .find(|(id, _)| *id == wanted)
                .map(|(_, value)| Arc::clone(value))
        };
        let value = match newer {
            Some(value) => value,
            None => {
                let (id, value) = self.first.get()?;
                if *id != wanted {
                    return None;
                }
                Arc::clone(value)
            }
        };
        value.downcast::<T>().ok()
    }
}
