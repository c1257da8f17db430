//! Erasing a user everywhere: [`Erasure`] deletes every session of one user across the session
//! types it knows, and reports what it deleted (ARCHITECTURE.md, "Erasure").

use std::future::Future;
use std::pin::Pin;

use crate::error::StoreError;

/// What an erasure deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Erased {
    /// Each session deleted: its type and its key (as the key strategy makes it).
    pub sessions: Vec<ErasedSession>,
    /// The session types whose key strategy cannot tell which keys are a user's (a custom
    /// one): nothing of them was deleted. Erase their keys with `SessionMiddleware::erase`.
    pub not_covered: Vec<&'static str>,
}

/// One session an erasure deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErasedSession {
    /// The session type.
    pub session: &'static str,
    /// Its key, as the key strategy makes it (`"42:42"`).
    pub key: String,
}

impl Erased {
    pub(crate) fn push(&mut self, session: &'static str, key: String) {
        self.sessions.push(ErasedSession { session, key });
    }

    /// Whether nothing was deleted.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn extend(&mut self, other: Erased) {
        self.sessions.extend(other.sessions);
        self.not_covered.extend(other.not_covered);
    }
}

/// The future [`EraseUser::erase_user`] returns.
pub type EraseFuture<'a> = Pin<Box<dyn Future<Output = Result<Erased, StoreError>> + Send + 'a>>;

/// Sessions of one type that can delete a user's: implemented by `SessionMiddleware` (and so
/// reachable from every integration, e.g. `SessionLayer::middleware`). Sealed.
pub trait EraseUser: Send + Sync + 'static + sealed::Sealed {
    /// The session type's name.
    fn session(&self) -> &'static str;

    /// Deletes every session of this type that belongs to `user`.
    fn erase_user(&self, user: i64) -> EraseFuture<'_>;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Every session type of a bot, to delete all of one user's sessions at once: for a
/// data-protection request, or a `/deleteme` command.
///
/// Register each session type's middleware once, at startup. [`erase_user`](Self::erase_user)
/// then deletes, in every type, each session whose key is the user's (see
/// `SessionMiddleware::erase_user` for which keys those are), in the store and in the live
/// sessions of this process, and returns what it deleted. It is idempotent: after an error
/// (a store down), call it again.
///
/// ```
/// use typed_session::telegram::Update;
/// use typed_session::{Chain, Erasure, MemoryStore, Session, SessionMiddleware};
///
/// #[derive(Session)]
/// #[session(accessor = "profile")]
/// struct Profile {
///     name: String,
/// }
///
/// #[derive(Session)]
/// #[session(accessor = "settings", key = "user")]
/// struct Settings {
///     lang: String,
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let profiles = SessionMiddleware::<Profile, Update>::new(store.clone());
/// let settings = SessionMiddleware::<Settings, Update>::new(store.clone());
/// let chain = Chain::new().with(profiles.clone()).with(settings.clone()).handler(|ctx| {
///     Box::pin(async move {
///         ctx.profile().await?.set_name("Ada");
///         ctx.settings().await?.set_lang("en");
///         Ok(())
///     })
/// });
/// chain.run_update(Update::text(1, 7, 7, "hi")).await?;
/// chain.run_update(Update::text(2, 7, -100, "hi all")).await?;
///
/// let erasure = Erasure::new().register(&profiles).register(&settings);
/// let erased = erasure.erase_user(7).await?;
/// assert_eq!(erased.sessions.len(), 3); // Profile 7:7 and 7:-100, Settings 7
/// assert!(store.is_empty());
/// assert!(erasure.erase_user(7).await?.is_empty());
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
#[derive(Default)]
pub struct Erasure {
    types: Vec<Box<dyn EraseUser>>,
}

impl std::fmt::Debug for Erasure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.types.iter().map(|t| t.session()))
            .finish()
    }
}

impl Erasure {
    /// An erasure that knows no session type yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the sessions of one type (a `SessionMiddleware`; it is cloned, which shares its
    /// live sessions).
    pub fn register<T: EraseUser + Clone>(mut self, sessions: &T) -> Self {
        self.types.push(Box::new(sessions.clone()));
        self
    }

    /// Deletes every session of `user` in every registered type, one type after the other;
    /// returns what it deleted. On an error, what was deleted before it stays deleted, and
    /// calling again finishes the work.
    pub async fn erase_user(&self, user: i64) -> Result<Erased, StoreError> {
        let mut erased = Erased::default();
        for sessions in &self.types {
            erased.extend(sessions.erase_user(user).await?);
        }
        Ok(erased)
    }
}
