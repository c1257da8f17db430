//! The session middleware: attaches a session to each update, and after the rest of the chain
//! writes what changed as one patch (DESIGN S1–S10).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::chain::{ChainFuture, Middleware, Next};
use crate::context::Context;
use crate::error::{BoxError, SessionError};
use crate::handle::{Holding, Slot};
use crate::key::{Key, UpdateKeys};
use crate::registry::{Dirty, Entry, Registry};
use crate::session::Session;
use crate::store::{Patch, Store};

/// What happens to an update's session writes when the chain returns an error (or panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Write them anyway, like Telegraf.
    #[default]
    Persist,
    /// Take back this update's own writes (those no other update overwrote since). What other
    /// updates of the same key changed is still written.
    Discard,
}

/// What a stale `set_*` (DESIGN S9) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StalePolicy {
    /// Count it and log a warning; the write stands.
    #[default]
    Warn,
    /// Also end the update with [`SessionError::StaleWrite`], which the error policy then
    /// applies to.
    Error,
}

/// Counters of one session middleware.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) loads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) stale_writes: AtomicU64,
    pub(crate) late_accesses: AtomicU64,
}

impl Stats {
    /// Records read from the store (one per burst of concurrent updates of a key).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
    /// Patches written to the store.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Records deleted by `clear()`.
    pub fn deletes(&self) -> u64 {
        self.deletes.load(Ordering::Relaxed)
    }
    /// Bytes of field names and values written.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
    /// Stale `set_*` calls detected.
    pub fn stale_writes(&self) -> u64 {
        self.stale_writes.load(Ordering::Relaxed)
    }
    /// Uses of a handle after its update was persisted.
    pub fn late_accesses(&self) -> u64 {
        self.late_accesses.load(Ordering::Relaxed)
    }
}

/// What the slots and holdings of one middleware share.
pub(crate) struct Shared<S: Session> {
    pub registry: Registry<S>,
    pub store: Arc<dyn Store>,
    pub strategy: &'static str,
    pub on_error: ErrorPolicy,
    pub stale: StalePolicy,
    pub ttl: Option<Duration>,
    pub stats: Stats,
}

/// Configures a [`SessionMiddleware`]; see [`SessionMiddleware::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use typed_session::{ErrorPolicy, Key, MemoryStore, Session, SessionMiddleware, StalePolicy, Update};
///
/// #[derive(Session)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// let sessions = SessionMiddleware::<Cart, Update>::builder(MemoryStore::new())
///     .key(Key::chat())                     // one cart per chat
///     .on_error(ErrorPolicy::Discard)       // a failed update leaves the cart as it was
///     .stale_writes(StalePolicy::Error)     // a lost read-modify-write fails the update
///     .ttl(Some(Duration::from_secs(3600))) // idle carts expire after an hour
///     .build();
/// # let _ = sessions;
/// ```
pub struct SessionBuilder<S: Session, U> {
    store: Arc<dyn Store>,
    key: Key<U>,
    on_error: ErrorPolicy,
    stale: StalePolicy,
    ttl: Option<Duration>,
    _session: PhantomData<fn() -> S>,
}

impl<S: Session, U> SessionBuilder<S, U> {
    /// The key strategy (default: the one `#[session(key = ...)]` names, else user-in-chat).
    pub fn key(mut self, key: Key<U>) -> Self {
        self.key = key;
        self
    }

    /// What to do with the session when the chain fails (default: persist).
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.on_error = policy;
        self
    }

    /// What a stale write does (default: warn).
    pub fn stale_writes(mut self, policy: StalePolicy) -> Self {
        self.stale = policy;
        self
    }

    /// The expiry of stored sessions, renewed on every write (default: `#[session(ttl = ..)]`,
    /// else none).
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// The middleware.
    pub fn build(self) -> SessionMiddleware<S, U> {
        SessionMiddleware {
            shared: Arc::new(Shared {
                registry: Registry::new(),
                store: self.store,
                strategy: self.key.name(),
                on_error: self.on_error,
                stale: self.stale,
                ttl: self.ttl,
                stats: Stats::default(),
            }),
            key: self.key,
        }
    }
}

/// Attaches session `S` to every update that passes through it, and persists it after the
/// rest of the chain.
///
/// * The store is read on the first access in an update, not before (S2).
/// * Concurrent updates of one key share one live value and one store read (S3).
/// * After the chain returns, Ok or Err, the fields that changed are written as one patch, and
///   the update's future completes only when that write has (S5). Patches of one key are
///   written one after the other, in order.
/// * An update that never touched its session costs no store call at all.
///
/// Cloning is cheap and shares the live sessions and counters.
///
/// # Example
///
/// ```
/// use typed_session::{Chain, MemoryStore, Session, SessionMiddleware, Update};
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
/// chain.handle(Update::text(1, 7, 7, "hi")).await?;
/// assert_eq!(sessions.stats().writes(), 1);
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
pub struct SessionMiddleware<S: Session, U> {
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) key: Key<U>,
}

impl<S: Session, U> Clone for SessionMiddleware<S, U> {
    fn clone(&self) -> Self {
        SessionMiddleware {
            shared: Arc::clone(&self.shared),
            key: self.key.clone(),
        }
    }
}

impl<S: Session, U: UpdateKeys + 'static> SessionMiddleware<S, U> {
    /// A middleware with the defaults: the session type's key strategy, persist on error,
    /// warn on stale writes.
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).build()
    }

    /// A builder, to change the key strategy, error policy, stale policy or expiry.
    pub fn builder(store: impl Store) -> SessionBuilder<S, U> {
        let key = Key::builtin(S::KEY.unwrap_or(crate::KeyKind::UserInChat));
        Self::with_key(store, key)
    }
}

impl<S: Session, U> SessionMiddleware<S, U> {
    /// A builder for update types that do not implement [`UpdateKeys`].
    pub fn with_key(store: impl Store, key: Key<U>) -> SessionBuilder<S, U> {
        SessionBuilder {
            store: Arc::new(store),
            key,
            on_error: ErrorPolicy::default(),
            stale: StalePolicy::default(),
            ttl: S::TTL,
            _session: PhantomData,
        }
    }

    /// The middleware's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The number of keys currently held by running updates.
    pub fn live_sessions(&self) -> usize {
        self.shared.registry.len()
    }

    /// The number of sessions kept in memory only because their last persist failed. Each is
    /// written by the next update of its key that uses it, or by [`SessionMiddleware::flush`].
    pub fn unsaved_sessions(&self) -> usize {
        self.shared.registry.unsaved()
    }

    /// Waits until no update holds a session, every persist included (for graceful shutdown
    /// and for tests).
    pub async fn wait_idle(&self) {
        self.shared.registry.wait_idle().await
    }

    /// Retries the persist of every session whose last persist failed; returns how many are
    /// still unsaved, with the first error.
    pub async fn flush(&self) -> Result<(), (usize, SessionError)> {
        let mut failed = 0;
        let mut first = None;
        for entry in self.shared.registry.hold_unsaved() {
            let result = persist(&self.shared, &entry).await;
            self.shared.registry.release(&entry, result.is_err());
            if let Err(error) = result {
                failed += 1;
                first.get_or_insert(error);
            }
        }
        match first {
            None => Ok(()),
            Some(error) => Err((failed, error)),
        }
    }
}

impl<S: Session, U: Send + Sync + 'static> Middleware<U> for SessionMiddleware<S, U> {
    fn call<'a>(&'a self, ctx: &'a Context<U>, next: Next<'a, U>) -> ChainFuture<'a> {
        Box::pin(async move {
            let key = self.key.shared_key_of(ctx.update());
            let slot = Arc::new(Slot::new(Arc::clone(&self.shared), key));
            ctx.attach(Arc::clone(&slot));
            let guard = FinishOnDrop(Some(slot));
            let outcome = next.run(ctx).await;
            match guard.defuse().and_then(|slot| slot.finish()) {
                Some(holding) => finish(holding, outcome).await,
                None => outcome,
            }
        })
    }

    fn flush(&self) -> ChainFuture<'_> {
        Box::pin(async move {
            self.wait_idle().await;
            SessionMiddleware::flush(self)
                .await
                .map_err(|(unsaved, error)| {
                    tracing::error!(session = S::NAME, unsaved, %error, "sessions still unsaved");
                    error.into()
                })
        })
    }
}

/// Finishes a session whose chain was dropped before it returned: cancelled, or unwinding
/// from a panic. The persist then runs on a task of its own (the error policy applies as for
/// a failed chain); [`SessionMiddleware::wait_idle`] waits for it.
pub(crate) struct FinishOnDrop<S: Session>(pub(crate) Option<Arc<Slot<S>>>);

impl<S: Session> FinishOnDrop<S> {
    pub(crate) fn defuse(mut self) -> Option<Arc<Slot<S>>> {
        self.0.take()
    }
}

impl<S: Session> Drop for FinishOnDrop<S> {
    fn drop(&mut self) {
        let Some(holding) = self.0.take().and_then(|slot| slot.finish()) else {
            return;
        };
        let how = if std::thread::panicking() {
            "panicking"
        } else {
            "cancelled"
        };
        let error = SessionError::Interrupted {
            session: S::NAME,
            key: holding.entry.key.to_string(),
            how,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = finish(holding, Err(error.into())).await {
                        tracing::error!(session = S::NAME, %error, "session of an interrupted update");
                    }
                });
            }
            Err(_) => {
                // No runtime to persist on: keep the changes live, as after a failed persist,
                // for the next update of the key or `flush()`.
                let unsaved = holding.entry.lock().has_changes();
                tracing::error!(
                    session = S::NAME,
                    key = &*holding.entry.key,
                    unsaved,
                    "update {how} outside a tokio runtime; its session is written by the next update of its key or flush()"
                );
                holding.shared.registry.release(&holding.entry, unsaved);
            }
        }
    }
}

/// Applies the error policy, persists, releases the hold, and merges the outcomes.
pub(crate) async fn finish<S: Session>(
    holding: Arc<Holding<S>>,
    outcome: Result<(), BoxError>,
) -> Result<(), BoxError> {
    let shared = &holding.shared;
    let outcome = match (outcome, holding.stale_field()) {
        (Ok(()), Some(field)) => Err(SessionError::StaleWrite {
            session: S::NAME,
            key: holding.entry.key.to_string(),
            field,
        }
        .into()),
        (outcome, _) => outcome,
    };
    if outcome.is_err() && shared.on_error == ErrorPolicy::Discard {
        holding.revert();
    }
    let persisted = persist(shared, &holding.entry).await;
    shared.registry.release(&holding.entry, persisted.is_err());
    match (outcome, persisted) {
        (outcome, Ok(())) => outcome,
        (Ok(()), Err(persist)) => Err(persist.into()),
        (Err(chain), Err(persist)) => Err(match persist {
            SessionError::Persist {
                session,
                key,
                source,
                chain: None,
            } => SessionError::Persist {
                session,
                key,
                source,
                chain: Some(chain),
            }
            .into(),
            other => {
                tracing::error!(session = S::NAME, error = %chain, "chain error, followed by a session error");
                other.into()
            }
        }),
    }
}

/// Writes the entry's dirty fields, whoever changed them, as one patch.
async fn persist<S: Session>(shared: &Shared<S>, entry: &Entry<S>) -> Result<(), SessionError> {
    let persist_error = |source| SessionError::Persist {
        session: S::NAME,
        key: entry.key.to_string(),
        source,
        chain: None,
    };
    let _in_order = entry.write_gate.lock().await;

    let delete_epoch = {
        let state = entry.lock();
        state.delete_pending.then_some(state.clear_epoch)
    };
    if let Some(epoch) = delete_epoch {
        shared
            .store
            .delete(&entry.key)
            .await
            .map_err(persist_error)?;
        shared.stats.deletes.fetch_add(1, Ordering::Relaxed);
        let mut state = entry.lock();
        for field in state.fields.iter_mut() {
            field.stored = None;
        }
        if state.clear_epoch == epoch {
            state.delete_pending = false;
        }
    }

    let mut patch = Patch {
        ttl: shared.ttl,
        ..Patch::default()
    };
    {
        let mut state = entry.lock();
        let mut defaults: Option<S> = None;
        for (index, spec) in S::FIELDS.iter().enumerate() {
            let field = &state.fields[index];
            let version = field.version;
            match field.dirty {
                Dirty::Clean => {}
                Dirty::Set => {
                    let encoded = match state.value.encode_field(index) {
                        Ok(encoded) => encoded,
                        Err(source) => {
                            state.forget_in_flight();
                            return Err(SessionError::Encode {
                                session: S::NAME,
                                key: entry.key.to_string(),
                                field: spec.name,
                                source,
                            });
                        }
                    };
                    let unchanged = match &state.fields[index].stored {
                        Some(stored) => *stored == encoded,
                        // Nothing stored reads back as the default (built once per persist).
                        None => defaults
                            .get_or_insert_with(S::default)
                            .encode_field(index)
                            .is_ok_and(|d| d == encoded),
                    };
                    if unchanged {
                        state.fields[index].dirty = Dirty::Clean;
                    } else {
                        patch.set.push((spec.name, encoded));
                        state.fields[index].in_flight = Some((version, true));
                    }
                }
                Dirty::Remove => {
                    if state.fields[index].stored.is_none() {
                        state.fields[index].dirty = Dirty::Clean;
                    } else {
                        patch.remove.push(spec.name);
                        state.fields[index].in_flight = Some((version, false));
                    }
                }
            }
        }
    }
    if patch.is_empty() {
        return Ok(());
    }

    let bytes = patch.bytes();
    if let Err(source) = shared.store.apply(&entry.key, &patch).await {
        entry.lock().forget_in_flight();
        return Err(persist_error(source));
    }
    shared.stats.writes.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .bytes_written
        .fetch_add(bytes as u64, Ordering::Relaxed);
    tracing::debug!(
        session = S::NAME,
        key = &*entry.key,
        set = patch.set.len(),
        removed = patch.remove.len(),
        bytes,
        "session persisted"
    );

    // Fields were pushed in index order, so the set values come back in the same order.
    let mut values = patch.set.into_iter().map(|(_, value)| value);
    let mut state = entry.lock();
    for field in state.fields.iter_mut() {
        let Some((version, was_set)) = field.in_flight.take() else {
            continue;
        };
        field.stored = if was_set { values.next() } else { None };
        if field.version == version {
            field.dirty = Dirty::Clean;
        }
    }
    Ok(())
}
