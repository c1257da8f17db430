//! What an update holds of a session: its [`Slot`] in the context, its [`Holding`] of the live
//! entry, and the [`SessionRef`] that typed handles wrap.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::error::SessionError;
use crate::middleware::{ErrorPolicy, Shared, StalePolicy};
use crate::registry::{Dirty, Entry, State};
use crate::session::Session;

/// One update's place for session `S` in its context. It takes a hold on the live entry only
/// when the session is first used, so an update that never touches it costs no store I/O.
pub(crate) struct Slot<S: Session> {
    shared: Arc<Shared<S>>,
    key: Option<Arc<str>>,
    state: Mutex<SlotState<S>>,
}

struct SlotState<S: Session> {
    finished: bool,
    holding: Option<Arc<Holding<S>>>,
}

impl<S: Session> Slot<S> {
    pub fn new(shared: Arc<Shared<S>>, key: Option<Arc<str>>) -> Self {
        Slot {
            shared,
            key,
            state: Mutex::new(SlotState {
                finished: false,
                holding: None,
            }),
        }
    }

    /// The holding of this update, taken and loaded on first use.
    pub async fn hold(&self) -> Result<Arc<Holding<S>>, SessionError> {
        let holding = {
            let mut state = self.state.lock();
            if state.finished {
                return Err(SessionError::AfterPersist {
                    session: S::NAME,
                    key: self.key.as_deref().unwrap_or_default().to_owned(),
                });
            }
            let Some(key) = &self.key else {
                return Err(SessionError::NoKey {
                    session: S::NAME,
                    strategy: self.shared.strategy,
                });
            };
            match &state.holding {
                Some(holding) => Arc::clone(holding),
                None => {
                    let entry = self.shared.registry.acquire(key);
                    let holding = Arc::new(Holding::new(Arc::clone(&self.shared), entry));
                    state.holding = Some(Arc::clone(&holding));
                    holding
                }
            }
        };
        holding
            .entry
            .ensure_loaded(&*self.shared.store, &self.shared.stats.loads)
            .await?;
        Ok(holding)
    }

    /// Marks the slot finished and hands out its holding, if the session was used. Later
    /// accesses get [`SessionError::AfterPersist`].
    pub fn finish(&self) -> Option<Arc<Holding<S>>> {
        let mut state = self.state.lock();
        state.finished = true;
        let holding = state.holding.take()?;
        holding.finished.store(true, Ordering::Release);
        Some(holding)
    }
}

/// Session `S` of one update, loaded on first [`get`](Self::get): what framework adapters hand
/// to handlers that need `'static` values (a request extension with the tower layer, a
/// dependency with the teloxide adapter).
///
/// Cloning it is cheap; every clone reaches the same session. Using it after the update was
/// persisted returns [`SessionError::AfterPersist`] and is counted as a late access
/// (DESIGN S10).
pub struct LazySession<S: Session>(Arc<Slot<S>>);

impl<S: Session> Clone for LazySession<S> {
    fn clone(&self) -> Self {
        LazySession(Arc::clone(&self.0))
    }
}

impl<S: Session> std::fmt::Debug for LazySession<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySession")
            .field("session", &S::NAME)
            .field("key", &self.0.key)
            .finish()
    }
}

impl<S: Session> LazySession<S> {
    #[cfg_attr(not(any(feature = "tower", feature = "teloxide")), allow(dead_code))]
    pub(crate) fn new(slot: Arc<Slot<S>>) -> Self {
        LazySession(slot)
    }

    /// The session, loaded on first use. The handle is `'static`; using it after the update
    /// was persisted is detected and reported (DESIGN S10).
    ///
    /// # Errors
    ///
    /// As [`Context::session_of`](crate::Context::session_of).
    pub async fn get(&self) -> Result<S::Handle<'static>, SessionError> {
        let holding = self.0.hold().await?;
        Ok(S::handle(SessionRef::new(holding)))
    }
}

/// What one update changed, to take back under [`ErrorPolicy::Discard`].
#[derive(Default)]
struct Undo {
    fields: Vec<FieldUndo>,
    /// `delete_pending` before this update's first `clear()`, and the epoch of its last one.
    clear: Option<(bool, u64)>,
}

struct FieldUndo {
    index: usize,
    /// The encoded value before this update's first write; `None` if it could not be encoded.
    before: Option<String>,
    /// The version of this update's last write.
    version_after: u64,
}

/// One update's hold on a live entry.
pub struct Holding<S: Session> {
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) entry: Arc<Entry<S>>,
    /// Per persisted field, the version this update last read or wrote (0: never).
    seen: Box<[AtomicU64]>,
    undo: Option<Mutex<Undo>>,
    stale: OnceLock<&'static str>,
    pub(crate) finished: AtomicBool,
}

impl<S: Session> Holding<S> {
    fn new(shared: Arc<Shared<S>>, entry: Arc<Entry<S>>) -> Self {
        let undo = (shared.on_error == ErrorPolicy::Discard).then(Mutex::default);
        Holding {
            seen: S::FIELDS.iter().map(|_| AtomicU64::new(0)).collect(),
            undo,
            stale: OnceLock::new(),
            finished: AtomicBool::new(false),
            shared,
            entry,
        }
    }

    /// The first field this update wrote stale, when stale writes are errors.
    pub(crate) fn stale_field(&self) -> Option<&'static str> {
        self.stale.get().copied()
    }

    /// Remembers field `index` before this update's first write to it (Discard policy only).
    fn remember(&self, state: &State<S>, index: usize) {
        let Some(undo) = &self.undo else { return };
        let mut undo = undo.lock();
        if undo.fields.iter().any(|u| u.index == index) {
            return;
        }
        undo.fields.push(FieldUndo {
            index,
            before: state.value.encode_field(index).ok(),
            version_after: 0,
        });
    }

    fn wrote(&self, index: usize, version: u64) {
        self.seen[index].store(version, Ordering::Relaxed);
        let Some(undo) = &self.undo else { return };
        if let Some(u) = undo.lock().fields.iter_mut().find(|u| u.index == index) {
            u.version_after = version;
        }
    }

    /// Takes back this update's writes that no other update has overwritten since. The
    /// restored fields are marked, so the persist that follows writes them only if another
    /// update had already saved the value being taken back.
    pub(crate) fn revert(&self) {
        let Some(undo) = &self.undo else { return };
        let undo = std::mem::take(&mut *undo.lock());
        let mut state = self.entry.lock();
        for u in undo.fields.iter().rev() {
            if state.fields[u.index].version != u.version_after {
                continue;
            }
            let restored = match &u.before {
                Some(before) => state.value.decode_field(u.index, before).is_ok(),
                None => false,
            };
            if restored {
                state.bump(u.index, Dirty::Set);
            }
        }
        if let Some((before, epoch)) = undo.clear
            && state.clear_epoch == epoch
        {
            state.delete_pending = before;
        }
    }
}

/// The runtime side of a typed session handle: the generated `{Type}Handle` wraps one.
///
/// `'a` is the borrow of the context it came from, so a handle cannot outlive its update's
/// chain (DESIGN U6); `SessionRef<'static, S>` comes from
/// [`Context::session_owned`](crate::Context::session_owned) and checks at run time instead.
///
/// Every method locks the live state only for its own duration. The closures given to
/// [`read`](Self::read), [`update`](Self::update) and friends run under that lock: they must
/// not call back into the same session (that panics rather than deadlocks), and since they
/// are synchronous, no borrow of session state can be held across an `.await`.
pub struct SessionRef<'a, S: Session> {
    holding: Arc<Holding<S>>,
    _context: PhantomData<&'a ()>,
}

impl<S: Session> Clone for SessionRef<'_, S> {
    fn clone(&self) -> Self {
        SessionRef {
            holding: Arc::clone(&self.holding),
            _context: PhantomData,
        }
    }
}

impl<'a, S: Session> SessionRef<'a, S> {
    pub(crate) fn new(holding: Arc<Holding<S>>) -> Self {
        SessionRef {
            holding,
            _context: PhantomData,
        }
    }

    /// The session key.
    pub fn key(&self) -> &str {
        &self.holding.entry.key
    }

    /// Whether the update this handle belongs to is still running. Handles from
    /// [`Context::session_owned`](crate::Context::session_owned) can outlive it; what they
    /// write then is reported and not saved by that update.
    pub fn is_live(&self) -> bool {
        !self.holding.finished.load(Ordering::Acquire)
    }

    fn check_live(&self, what: &'static str) {
        if self.is_live() {
            return;
        }
        self.holding
            .shared
            .stats
            .late_accesses
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            session = S::NAME,
            key = self.key(),
            access = what,
            "session used after its update was persisted; this update will not save it"
        );
    }

    /// Runs `f` on the current value. `index` is the persisted field being read, if one is:
    /// reads never mark anything dirty, but they are remembered for stale-write detection.
    pub fn read<R>(&self, index: Option<usize>, f: impl FnOnce(&S) -> R) -> R {
        self.check_live("read");
        let state = self.holding.entry.lock();
        if let Some(index) = index {
            self.holding.seen[index].store(state.fields[index].version, Ordering::Relaxed);
        }
        f(&state.value)
    }

    /// Overwrites persisted field `index` with `f` (a `set_*`). If another update changed the
    /// field after this one last read it, the write is stale (DESIGN S9): it is counted and
    /// logged, and in strict mode the update ends with [`SessionError::StaleWrite`].
    pub fn set(&self, index: usize, f: impl FnOnce(&mut S)) {
        self.check_live("write");
        let mut state = self.holding.entry.lock();
        let seen = self.holding.seen[index].load(Ordering::Relaxed);
        if seen != 0 && seen != state.fields[index].version {
            self.report_stale(index);
        }
        self.holding.remember(&state, index);
        f(&mut state.value);
        let version = state.bump(index, Dirty::Set);
        self.holding.wrote(index, version);
    }

    /// Changes persisted field `index` in place with `f` (an `update_*`): an atomic
    /// read-modify-write that is never stale.
    pub fn update<R>(&self, index: usize, f: impl FnOnce(&mut S) -> R) -> R {
        self.check_live("write");
        let mut state = self.holding.entry.lock();
        self.holding.remember(&state, index);
        let out = f(&mut state.value);
        let version = state.bump(index, Dirty::Set);
        self.holding.wrote(index, version);
        out
    }

    /// Changes fields that are not persisted (`#[session(skip)]`); nothing is marked.
    pub fn update_transient<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        self.check_live("write");
        f(&mut self.holding.entry.lock().value)
    }

    /// Sets persisted field `index` back to its default and removes it from the store, so it
    /// follows the default from now on.
    pub fn reset(&self, index: usize) {
        self.check_live("write");
        let mut state = self.holding.entry.lock();
        self.holding.remember(&state, index);
        state.value.reset_field(index);
        let version = state.bump(index, Dirty::Remove);
        self.holding.wrote(index, version);
    }

    /// Replaces the whole value; every persisted field is marked, and only those whose
    /// encoding changed are written.
    pub fn replace(&self, value: S) {
        self.check_live("write");
        let mut state = self.holding.entry.lock();
        for index in 0..S::FIELDS.len() {
            self.holding.remember(&state, index);
        }
        state.value = value;
        for index in 0..S::FIELDS.len() {
            let version = state.bump(index, Dirty::Set);
            self.holding.wrote(index, version);
        }
    }

    /// Deletes the session from the store at persist (Telegraf's `ctx.session = null`); from
    /// now on reads see the defaults, and writes start a new record.
    pub fn clear(&self) {
        self.check_live("clear");
        let mut state = self.holding.entry.lock();
        for index in 0..S::FIELDS.len() {
            self.holding.remember(&state, index);
        }
        if let Some(undo) = &self.holding.undo {
            let mut undo = undo.lock();
            let before = undo
                .clear
                .map_or(state.delete_pending, |(before, _)| before);
            undo.clear = Some((before, state.clear_epoch + 1));
        }
        state.value = S::default();
        state.delete_pending = true;
        state.clear_epoch += 1;
        for index in 0..S::FIELDS.len() {
            let version = state.bump(index, Dirty::Clean);
            self.holding.wrote(index, version);
        }
    }

    /// A copy of the whole current value.
    pub fn snapshot(&self) -> S
    where
        S: Clone,
    {
        self.read(None, S::clone)
    }

    fn report_stale(&self, index: usize) {
        let field = S::FIELDS[index].name;
        self.holding
            .shared
            .stats
            .stale_writes
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            session = S::NAME,
            key = self.key(),
            field,
            "stale write: another update changed this field after this update read it; use update_* for read-modify-write"
        );
        if self.holding.shared.stale == StalePolicy::Error {
            let _ = self.holding.stale.set(field);
        }
    }
}
