//! The per-update context: the update plus one slot per attached session type.

use std::any::{Any, TypeId};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::error::SessionError;
use crate::handle::{SessionRef, Slot};
use crate::session::Session;

type AnySlot = Arc<dyn Any + Send + Sync>;

/// What every middleware of a [`Chain`](crate::Chain) receives for one update.
///
/// Session types attach themselves through their [`SessionMiddleware`](crate::SessionMiddleware);
/// the derive's accessor (`ctx.session()`) then returns the typed handle.
///
/// # Example
///
/// ```
/// use typed_session::{Chain, Context, MemoryStore, Session, SessionMiddleware, Update};
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
/// // The chain is over: the session was persisted, and asking for it now is an error.
/// assert!(ctx.session().await.is_err());
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
pub struct Context<U> {
    update: U,
    /// The first session attached (most chains have one), without a heap allocation.
    first: OnceLock<(TypeId, AnySlot)>,
    /// Any further ones, newest last.
    more: Mutex<Vec<(TypeId, AnySlot)>>,
    /// A Bot API method to send back as the webhook's HTTP response.
    reply: Mutex<Option<serde_json::Value>>,
}

impl<U> Context<U> {
    /// A context for `update`, with no session attached.
    pub fn new(update: U) -> Self {
        Context {
            update,
            first: OnceLock::new(),
            more: Mutex::new(Vec::new()),
            reply: Mutex::new(None),
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
    /// webhook server sends it only after every session of the update is persisted. A later
    /// call replaces an earlier one.
    pub fn reply_with(&self, method: serde_json::Value) {
        *self.reply.lock() = Some(method);
    }

    /// Takes the reply set with [`reply_with`](Self::reply_with), if any.
    pub fn take_reply(&self) -> Option<serde_json::Value> {
        self.reply.lock().take()
    }

    pub(crate) fn attach<S: Session>(&self, slot: Arc<Slot<S>>) {
        if let Err(entry) = self.first.set((TypeId::of::<S>(), slot)) {
            self.more.lock().push(entry);
        }
    }

    /// The newest slot of `S`: a session middleware nested in another of the same type wins.
    pub(crate) fn slot<S: Session>(&self) -> Option<Arc<Slot<S>>> {
        let wanted = TypeId::of::<S>();
        let newer = {
            let more = self.more.lock();
            more.iter()
                .rev()
                .find(|(id, _)| *id == wanted)
                .map(|(_, slot)| Arc::clone(slot))
        };
        let slot = match newer {
            Some(slot) => slot,
            None => {
                let (id, slot) = self.first.get()?;
                if *id != wanted {
                    return None;
                }
                Arc::clone(slot)
            }
        };
        slot.downcast::<Slot<S>>().ok()
    }

    /// The session `S` of this update, loaded on first use (the derive's `ctx.session()`
    /// calls this).
    ///
    /// # Errors
    ///
    /// [`SessionError::NotAttached`] when no middleware for `S` ran before this point,
    /// [`SessionError::NoKey`] when the update has no key, [`SessionError::AfterPersist`] when
    /// the middleware has already persisted it, and the load errors of the store.
    pub async fn session_of<S: Session>(&self) -> Result<S::Handle<'_>, SessionError> {
        let holding = self.hold::<S>().await?;
        Ok(S::handle(SessionRef::new(holding)))
    }

    /// Like [`Context::session_of`], but the handle does not borrow the context, for framework
    /// adapters that need `'static` values. Using it after the update was persisted is
    /// detected and reported (DESIGN S10).
    pub async fn session_owned<S: Session>(&self) -> Result<S::Handle<'static>, SessionError> {
        let holding = self.hold::<S>().await?;
        Ok(S::handle(SessionRef::new(holding)))
    }

    async fn hold<S: Session>(&self) -> Result<Arc<crate::handle::Holding<S>>, SessionError> {
        let slot = self
            .slot::<S>()
            .ok_or(SessionError::NotAttached { session: S::NAME })?;
        slot.hold().await
    }
}
