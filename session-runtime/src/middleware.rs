//! [`SessionMiddleware`]: attaches a session to each update of a [`Chain`](crate::Chain), and
//! after the rest of the chain writes what changed as one patch.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::chain::{ChainFuture, Middleware, Next};
use crate::config::{
    ConfigError, ErrorPolicy, Freshness, MAX_TTL, MAX_WAIT, Renewal, SaveFailurePolicy, StalePolicy,
};
use crate::context::Context;
use crate::erasure::{EraseFuture, EraseUser, Erased, sealed};
use crate::error::{FlushError, StoreError};
use crate::key::{KeyKind, KeyStrategy, UpdateKeys, UserKeys};
use crate::lifecycle::Scope;
use crate::live::expiry::Expiry;
use crate::live::registry::Registry;
use crate::live::sessions::Sessions;
use crate::live::window::Signer;
use crate::session::Session;
use crate::stats::Stats;
use crate::store::{Cursor, Page, Store};

/// How many keys of a user one listing brings while erasing them.
const ERASE_PAGE: usize = 100;

/// Configures a [`SessionMiddleware`]; see [`SessionMiddleware::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use typed_session::telegram::Update;
/// use typed_session::{ErrorPolicy, KeyStrategy, MemoryStore, Session, SessionMiddleware, StalePolicy};
///
/// #[derive(Session)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// let sessions = SessionMiddleware::<Cart, Update>::builder(MemoryStore::new())
///     .key(KeyStrategy::chat())                     // one cart per chat
///     .on_error(ErrorPolicy::Discard)       // a failed update leaves the cart as it was
///     .on_stale_write(StalePolicy::Error)     // a lost read-modify-write fails the update
///     .ttl(Some(Duration::from_secs(3600))) // idle carts expire after an hour
///     .build();
/// # let _ = sessions;
/// ```
pub struct SessionBuilder<S: Session, U> {
    store: Arc<dyn Store>,
    key: KeyStrategy<U>,
    on_error: ErrorPolicy,
    stale: StalePolicy,
    save_failure: SaveFailurePolicy,
    exclusive: Option<Duration>,
    lease: Option<Duration>,
    keep_lease: Duration,
    redelivery: bool,
    ttl: Option<Duration>,
    renewal: Renewal,
    keep_decoded: usize,
    freshness: Freshness,
    writer_tag: Option<u64>,
    _session: PhantomData<fn() -> S>,
}

impl<S: Session, U> fmt::Debug for SessionBuilder<S, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("session", &S::NAME)
            .field("key", &self.key)
            .field("on_error", &self.on_error)
            .field("on_stale_write", &self.stale)
            .field("exclusive", &self.exclusive)
            .field("lease", &self.lease)
            .field("keep_lease", &self.keep_lease)
            .field("ttl", &self.ttl)
            .field("renewal", &self.renewal)
            .field("keep_decoded", &self.keep_decoded)
            .field("freshness", &self.freshness)
            .finish_non_exhaustive()
    }
}

impl<S: Session, U> SessionBuilder<S, U> {
    /// The key strategy (default: the one `#[session(key = ...)]` names, else user-in-chat).
    pub fn key(mut self, key: KeyStrategy<U>) -> Self {
        self.key = key;
        self
    }

    /// What to do with the session when the chain fails (default: save).
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.on_error = policy;
        self
    }

    /// What happens to an update's writes when its session cannot be saved (default: take
    /// them back and have the update delivered again, see [`SaveFailurePolicy`]).
    pub fn on_save_failure(mut self, policy: SaveFailurePolicy) -> Self {
        self.save_failure = policy;
        self
    }

    /// Whether a delivery of an update whose writes are saved already is recognised and not
    /// applied again (default: on). An update's id comes from the key strategy
    /// ([`UpdateKeys::update_id`], Telegram's `update_id`; [`KeyStrategy::with_update_id`] for a
    /// custom key); the store keeps, beside each field, the id of the update that last wrote
    /// it, and the ids of the session's latest saved updates (at least 6). A delivery of an update
    /// still named there runs with its session writes not applied (they were saved by the
    /// first delivery), and ends as handled. What the handler does besides (a message it
    /// sends) happens again (ARCHITECTURE.md, "Redelivery", says exactly what holds). Turn it
    /// off for update types whose ids are not unique per delivered update.
    pub fn recognize_redelivery(mut self, on: bool) -> Self {
        self.redelivery = on;
        self
    }

    /// Runs one update per key at a time in this process: from its first use of the session
    /// to the end of its save, an update has the key to itself, and the next one waits for it
    /// (in arrival order, at most `wait`, then [`SessionError::Busy`](crate::SessionError::Busy)). Read, `.await`, write
    /// is then safe by construction, at the price of concurrency per key. Writers in other
    /// processes are still caught by conditional writes. An update must not wait inside its
    /// handler for another update of the same key: that other one waits for it.
    pub fn exclusive(mut self, wait: Duration) -> Self {
        self.exclusive = Some(wait);
        self.lease = None;
        self
    }

    /// Runs one update per key at a time across every process that shares the store with
    /// this mode on: [`exclusive`](Self::exclusive) in this process, plus a lease on the key
    /// held in the store while the update runs (ARCHITECTURE.md, "Exclusive mode").
    ///
    /// An update waits for its turn here, then for the lease (at most `wait` in all, then
    /// [`SessionError::Busy`](crate::SessionError::Busy)), loads the session with the lease, and releases it in the
    /// patch that saves its writes. The lease lasts `lease` (at least 100 ms) and is renewed
    /// every third of that while the update runs, so a long handler keeps it; a process that
    /// crashes or hangs lets it run out, and another takes it over then. The lease field's
    /// version is a fencing token: a holder that lost its lease (paused past its end, cut off
    /// from the store) has its save refused whole, with [`SessionError::LeaseLost`](crate::SessionError::LeaseLost), and its
    /// update runs again. Each update costs one more write than without: the claim.
    ///
    /// Takeover timing reads `until` with the reader's clock, so keep the clocks of the
    /// processes within a small part of `lease` of each other (NTP does); whether a write
    /// applies never depends on a clock.
    pub fn exclusive_across_processes(mut self, wait: Duration, lease: Duration) -> Self {
        self.exclusive = Some(wait);
        self.lease = Some(lease.max(crate::live::lease::MIN_LEASE));
        self
    }

    /// In exclusive mode across processes, keeps the key's lease for `linger` after each
    /// update instead of releasing it (default: zero, released in the update's patch). The
    /// next update of the key in this process within `linger` then neither loads the session
    /// nor claims the lease: no other process can have written it, so the value this process
    /// holds is the stored one. A read-only update costs no store call, a writing update one
    /// (its patch, which keeps the lease for `linger` from then), against three without
    /// (load, claim, patch).
    ///
    /// Meant for where one process handles each chat (one poller, or replicas behind a router
    /// that sends a chat to one replica). Another process's update of a kept key waits until
    /// this process has had no update of it for `linger` (and at most `wait`); a process that
    /// keeps receiving updates of a key gives its lease up once it has held it for a whole
    /// lease term, so that others get a turn. A crashed process's kept lease lets others in
    /// after `linger`. `linger` is at most the lease term and the session's
    /// [`ttl`](Self::ttl) and, like the term, should be well above the clock difference
    /// between the processes. Without
    /// [`exclusive_across_processes`](Self::exclusive_across_processes) it has no effect.
    pub fn keep_lease(mut self, linger: Duration) -> Self {
        self.keep_lease = linger;
        self
    }

    /// What a stale write does (default: refuse it and run the update again).
    pub fn on_stale_write(mut self, policy: StalePolicy) -> Self {
        self.stale = policy;
        self
    }

    /// The expiry of stored sessions, renewed on every write (default: `#[session(ttl = ..)]`,
    /// else none).
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// What renews the expiry: writes only, or every use, reads included (default:
    /// `#[session(renewal = ..)]`, else [`Renewal::OnWrite`]). Reads renew at most once per
    /// key per quarter of the `ttl` in each process; see [`Renewal::OnAccess`].
    pub fn renewal(mut self, renewal: Renewal) -> Self {
        self.renewal = renewal;
        self
    }

    /// How many sessions no update holds are kept decoded, so that the next update of their
    /// key skips the load (default 10,000; 0 keeps none). Under [`Freshness::Checked`] only a
    /// store that tells revisions ([`Store::revision`]: the memory store, SQLite) lets any be kept;
    /// under [`Freshness::Cached`] every store does. The one idle longest is dropped first.
    /// Each costs its decoded session plus about 100 bytes.
    pub fn keep_decoded(mut self, sessions: usize) -> Self {
        self.keep_decoded = sessions;
        self
    }

    /// What an update reads of a session kept decoded since an earlier update of its key
    /// (default [`Freshness::Checked`]: what the store holds). [`Freshness::Cached`] keeps
    /// sessions decoded on every store and skips the load: one round trip per writing
    /// update, and a refused write where a read was stale.
    pub fn freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = freshness;
        self
    }

    /// Fixes the tag this middleware signs its patches with (default: random per middleware).
    /// For tests that replay one interleaving of several middlewares: two that share a tag
    /// share a signature slot, and a look-up after a timed-out save then falls back to the
    /// window of recent updates.
    #[doc(hidden)]
    pub fn writer_tag(mut self, tag: u64) -> Self {
        self.writer_tag = Some(tag);
        self
    }

    /// The durations set beyond their limits, with the limit of each (see
    /// [`try_build`](Self::try_build)).
    fn beyond_limits(&self) -> Vec<ConfigError> {
        let settings = [
            ("exclusive", self.exclusive, MAX_WAIT),
            ("exclusive_across_processes", self.lease, MAX_WAIT),
            ("ttl", self.ttl, MAX_TTL),
        ];
        settings
            .into_iter()
            .filter_map(|(setting, value, limit)| {
                value
                    .filter(|&value| value > limit)
                    .map(|value| ConfigError {
                        session: S::NAME,
                        setting,
                        value,
                        limit,
                    })
            })
            .collect()
    }

    /// The middleware, or the first setting beyond its limit: the wait of
    /// [`exclusive`](Self::exclusive) and the lease of
    /// [`exclusive_across_processes`](Self::exclusive_across_processes) at most a day, the
    /// [`ttl`](Self::ttl) at most ten years.
    ///
    /// ```
    /// use std::time::Duration;
    /// use typed_session::telegram::Update;
    /// use typed_session::{MemoryStore, Session, SessionMiddleware};
    ///
    /// #[derive(Session)]
    /// struct Visits {
    ///     count: u64,
    /// }
    ///
    /// let refused = SessionMiddleware::<Visits, Update>::builder(MemoryStore::new())
    ///     .exclusive(Duration::MAX)
    ///     .try_build()
    ///     .unwrap_err();
    /// assert_eq!(refused.setting, "exclusive");
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the setting, what it was given and its limit.
    pub fn try_build(self) -> Result<SessionMiddleware<S, U>, ConfigError> {
        match self.beyond_limits().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(self.build()),
        }
    }

    /// The middleware. A setting beyond its limit (see [`try_build`](Self::try_build), which
    /// refuses it instead) is clamped to the limit, with a warning that names it.
    pub fn build(mut self) -> SessionMiddleware<S, U> {
        for error in self.beyond_limits() {
            tracing::warn!(%error, "clamped to the limit");
        }
        if self.lease.is_none() && !self.keep_lease.is_zero() {
            tracing::warn!(
                session = S::NAME,
                "keep_lease has no effect without exclusive_across_processes"
            );
        }
        self.exclusive = self.exclusive.map(|wait| wait.min(MAX_WAIT));
        self.lease = self.lease.map(|lease| lease.min(MAX_WAIT));
        self.ttl = self.ttl.map(|ttl| ttl.min(MAX_TTL));
        SessionMiddleware {
            sessions: Arc::new(Sessions {
                registry: Registry::new(
                    self.keep_decoded,
                    self.freshness == Freshness::Cached && self.ttl.is_none(),
                    self.writer_tag.map_or_else(Signer::new, Signer::with_tag),
                ),
                prefix: Arc::from(format!("{}:", S::NAMESPACE)),
                store: self.store,
                strategy: self.key.name(),
                on_error: self.on_error,
                stale: self.stale,
                save_failure: self.save_failure,
                exclusive: self.exclusive,
                lease: self.lease.map(|term| crate::live::lease::Terms {
                    holder: crate::live::lease::new_holder(),
                    term,
                    // Never past the record's expiry, which every write of the lease renews:
                    // a kept lease never outlives the record it was read with.
                    linger: self
                        .keep_lease
                        .min(term)
                        .min(self.ttl.unwrap_or(Duration::MAX)),
                }),
                redelivery: self.redelivery,
                expiry: Expiry::new(self.ttl, self.renewal),
                stats: Stats::new(S::NAME),
            }),
            key: self.key,
        }
    }
}

/// Attaches session `S` to every update that passes through it, and saves it after the
/// rest of the chain.
///
/// * The store is read on the first access in an update, not before.
/// * Concurrent updates of one key share one live value and one store read.
/// * After the chain returns, Ok or Err, the fields that changed are written as one patch, and
///   the update's future completes only when that write has. Patches of one key are
///   written one after the other, in order.
/// * An update that never touched its session costs no store call at all.
///
/// Cloning is cheap and shares the live sessions and counters.
///
/// # Example
///
/// ```
/// use typed_session::telegram::Update;
/// use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};
///
/// #[derive(Session)]
/// struct Visits {
///     count: u64,
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let sessions = SessionMiddleware::<Visits, Update>::new(MemoryStore::new());
/// let chain = Chain::new()
///     .with(sessions.clone())
///     .handler(|ctx| Box::pin(async move {
///         ctx.session().await?.update_count(|c| *c += 1);
///         Ok(())
///     }));
/// chain.run_update(Update::text(1, 7, 7, "hi")).await?;
/// assert_eq!(sessions.stats().writes(), 1);
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
pub struct SessionMiddleware<S: Session, U> {
    sessions: Arc<Sessions<S>>,
    key: KeyStrategy<U>,
}

impl<S: Session, U> fmt::Debug for SessionMiddleware<S, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionMiddleware")
            .field("session", &S::NAME)
            .field("key", &self.key)
            .field("on_error", &self.sessions.on_error)
            .field("on_stale_write", &self.sessions.stale)
            .field("ttl", &self.sessions.expiry.ttl)
            .field("renewal", &self.sessions.expiry.renewal())
            .field("live_sessions", &self.live_sessions())
            .finish()
    }
}

impl<S: Session, U> Clone for SessionMiddleware<S, U> {
    fn clone(&self) -> Self {
        SessionMiddleware {
            sessions: Arc::clone(&self.sessions),
            key: self.key.clone(),
        }
    }
}

impl<S: Session, U: UpdateKeys + 'static> SessionMiddleware<S, U> {
    /// A middleware with the defaults: the session type's key strategy, save on error,
    /// warn on stale writes.
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).build()
    }

    /// A builder, to change the key strategy, error policy, stale policy or expiry.
    pub fn builder(store: impl Store) -> SessionBuilder<S, U> {
        let key = KeyStrategy::builtin(S::KEY.unwrap_or(KeyKind::UserInChat));
        Self::with_key(store, key)
    }
}

impl<S: Session, U> SessionMiddleware<S, U> {
    /// A builder for update types that do not implement [`UpdateKeys`].
    pub fn with_key(store: impl Store, key: KeyStrategy<U>) -> SessionBuilder<S, U> {
        SessionBuilder {
            store: Arc::new(store),
            key,
            on_error: ErrorPolicy::default(),
            stale: StalePolicy::default(),
            save_failure: SaveFailurePolicy::default(),
            exclusive: None,
            lease: None,
            keep_lease: Duration::ZERO,
            redelivery: true,
            ttl: S::TTL,
            renewal: S::RENEWAL,
            keep_decoded: crate::live::registry::IDLE_KEPT,
            freshness: Freshness::default(),
            writer_tag: None,
            _session: PhantomData,
        }
    }

    /// The middleware's counters.
    pub fn stats(&self) -> &Stats {
        &self.sessions.stats
    }

    /// The number of keys currently held by running updates (and kept because their last
    /// save failed, see [`unsaved_sessions`](Self::unsaved_sessions)).
    pub fn live_sessions(&self) -> usize {
        self.sessions.registry.len()
    }

    /// The number of sessions no update holds that are kept decoded, so that the next update
    /// of their key needs no load: with a store that tells revisions ([`Store::revision`]:
    /// the memory store, SQLite), while the stored record is still the one they read or wrote; on
    /// every store under [`Freshness::Cached`]. At most 10,000 per
    /// middleware unless [`SessionBuilder::keep_decoded`] says otherwise (ARCHITECTURE.md,
    /// "Decoded between updates").
    pub fn idle_sessions(&self) -> usize {
        self.sessions.registry.idle()
    }

    /// The number of sessions kept in memory only because their last save failed. Each is
    /// written by the next update of its key that uses it, or by [`SessionMiddleware::flush`].
    pub fn unsaved_sessions(&self) -> usize {
        self.sessions.registry.unsaved()
    }

    /// Waits until no update holds a session, every save included (for graceful shutdown
    /// and for tests).
    pub async fn wait_idle(&self) {
        self.sessions.registry.wait_idle().await
    }

    /// Saves again every session whose last save failed.
    ///
    /// # Errors
    ///
    /// [`FlushError`]: how many are still unsaved, with the first one's error.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.sessions.flush().await
    }

    /// Lists the keys of this session type's stored sessions that start with `prefix` (keys as
    /// the key strategy makes them, without the type's namespace), a page of about `limit` at
    /// a time: pass the page's [`next`](Page::next) cursor back for the following one. A
    /// session that exists for the whole walk is listed at least once, whatever is written
    /// meanwhile; see [`Store::keys`].
    ///
    /// ```
    /// use typed_session::telegram::Update;
    /// use typed_session::{MemoryStore, Session, SessionMiddleware};
    ///
    /// #[derive(Session)]
    /// struct Visits {
    ///     count: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let sessions = SessionMiddleware::<Visits, Update>::new(MemoryStore::new());
    /// let mut cursor = None;
    /// loop {
    ///     let page = sessions.keys("", cursor.as_ref(), 100).await?;
    ///     for key in &page.keys {
    ///         println!("{key}");
    ///     }
    ///     match page.next {
    ///         Some(next) => cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok::<(), typed_session::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub async fn keys(
        &self,
        prefix: &str,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let namespace = &*self.sessions.prefix;
        let mut page = self
            .sessions
            .store
            .keys(&format!("{namespace}{prefix}"), cursor, limit)
            .await?;
        for key in &mut page.keys {
            key.drain(..namespace.len().min(key.len()));
        }
        Ok(page)
    }

    /// Deletes the session of `key` (as the key strategy makes it), in the store and in this
    /// process: an update of the key running meanwhile does not bring the deleted values
    /// back, and one writing them takes its writes back and runs again on an empty session
    /// (ARCHITECTURE.md, "Erasure"). Deleting a session that does not exist is not an error.
    pub async fn erase(&self, key: &str) -> Result<(), StoreError> {
        let stored: Arc<str> = Arc::from(format!("{}{key}", self.sessions.prefix));
        self.sessions.erase(&stored).await
    }

    /// Deletes every session of this type that belongs to user `user` and returns their keys:
    /// per user per chat, each of their chats (`"{user}:{chat}"`); per user, theirs; per chat,
    /// their private chat with the bot (its id is theirs; group chats are shared and kept).
    /// Each is deleted as [`erase`](Self::erase) does; calling it again deletes nothing more.
    /// A custom key strategy cannot tell which keys are a user's: nothing is deleted, and the
    /// type is named in [`Erased::not_covered`].
    pub async fn erase_user(&self, user: i64) -> Result<Erased, StoreError> {
        let mut erased = Erased::default();
        let Some(kind) = self.key.kind() else {
            erased.not_covered.push(S::NAME);
            return Ok(erased);
        };
        let namespace = &*self.sessions.prefix;
        match kind.keys_of_user(user) {
            UserKeys::Exact(key) => {
                let stored: Arc<str> = Arc::from(format!("{namespace}{key}"));
                if self.sessions.store.load(&stored).await?.is_some() {
                    self.sessions.erase(&stored).await?;
                    erased.push(S::NAME, key);
                }
            }
            UserKeys::Prefix(prefix) => {
                let prefix = format!("{namespace}{prefix}");
                let mut cursor = None;
                loop {
                    let page = self
                        .sessions
                        .store
                        .keys(&prefix, cursor.as_ref(), ERASE_PAGE)
                        .await?;
                    for stored in page.keys {
                        let key = &stored[namespace.len()..];
                        // A scan (Redis) may list a key twice; it is reported once.
                        if erased.sessions.iter().any(|done| done.key == key) {
                            continue;
                        }
                        let key = key.to_owned();
                        self.sessions.erase(&Arc::from(stored)).await?;
                        erased.push(S::NAME, key);
                    }
                    match page.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
            }
        }
        Ok(erased)
    }

    /// Begins the session scope of `update` (`None`: an update the adapter could not read,
    /// which has no key).
    pub(crate) fn begin(&self, update: Option<&U>) -> Scope<S> {
        let key = update.and_then(|update| self.key.stored_key_of(update, &self.sessions.prefix));
        let id = update
            .filter(|_| self.sessions.redelivery)
            .and_then(|update| self.key.update_id_of(update));
        Scope::begin(&self.sessions, key, id)
    }
}

impl<S: Session, U: Send + Sync + 'static> Middleware<U> for SessionMiddleware<S, U> {
    fn call<'a>(&'a self, ctx: &'a Context<U>, next: Next<'a, U>) -> ChainFuture<'a> {
        Box::pin(async move {
            let scope = self.begin(Some(ctx.update()));
            scope.attach_to(ctx);
            let outcome = next.run(ctx).await;
            let ended = scope.end(outcome).await;
            if ended.is_unsaved() {
                ctx.mark_unsaved();
            }
            if ended.must_retry() {
                ctx.mark_retry();
            }
            ended.into_result(S::NAME)
        })
    }

    fn flush(&self) -> ChainFuture<'_> {
        Box::pin(async move {
            self.wait_idle().await;
            SessionMiddleware::flush(self)
                .await
                .map_err(|error| {
                    tracing::error!(session = S::NAME, unsaved = error.unsaved(), error = %error.first(), "sessions still unsaved");
                    error.into()
                })
        })
    }
}

impl<S: Session, U> sealed::Sealed for SessionMiddleware<S, U> {}

impl<S: Session, U: 'static> EraseUser for SessionMiddleware<S, U> {
    fn session(&self) -> &'static str {
        S::NAME
    }

    fn erase_user(&self, user: i64) -> EraseFuture<'_> {
        Box::pin(SessionMiddleware::erase_user(self, user))
    }
}
