//! [`SessionRef`]: the runtime side of a typed session handle, the surface the derive's
//! generated code calls; each method reaches the live session through the update's
//! [`Hold`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::StalePolicy;
use crate::error::SessionError;
use crate::live::hold::{Hold, Slot};
use crate::live::state::Dirty;
use crate::schema::Schema;
use crate::stats::Count;

/// The runtime side of a typed session handle: the generated `{Type}Handle` wraps one.
///
/// `'a` is the borrow of the context it came from, so a handle cannot outlive its update's
/// chain (ARCHITECTURE.md, "Late access"); `SessionRef<'static, S>` comes from
/// [`Context::session_owned`](crate::Context::session_owned) and checks at run time instead.
///
/// Every method locks the live state only for its own duration. The closures given to
/// [`read`](Self::read), [`update`](Self::update) and friends run under that lock: they must
/// not call back into the same session (that panics rather than deadlocks), and since they
/// are synchronous, no borrow of session state can be held across an `.await`.
pub struct SessionRef<'a, S: Schema> {
    /// The update's slot, its hold made.
    slot: Arc<Slot<S>>,
    _context: PhantomData<&'a ()>,
}

impl<S: Schema> Clone for SessionRef<'_, S> {
    fn clone(&self) -> Self {
        SessionRef {
            slot: Arc::clone(&self.slot),
            _context: PhantomData,
        }
    }
}

impl<S: Schema> std::fmt::Debug for SessionRef<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRef")
            .field("session", &S::NAME)
            .field("key", &self.key())
            .field("live", &self.is_live())
            .finish()
    }
}

impl<'a, S: Schema> SessionRef<'a, S> {
    /// The session of the update whose slot is `slot`: its hold made and the session loaded
    /// ([`Slot::hold`]). The one place handles are made, so each has a hold.
    pub(crate) async fn of(slot: Arc<Slot<S>>) -> Result<Self, SessionError> {
        slot.hold().await?;
        Ok(SessionRef {
            slot,
            _context: PhantomData,
        })
    }

    fn hold(&self) -> &Hold<S> {
        // Handles are made only by `SessionRef::of`, of a slot whose hold is made, and a made
        // hold stays.
        self.slot
            .made()
            .expect("a session handle is made only after its update's hold")
    }

    /// The session key (as the key strategy gave it; the store holds it after the session
    /// type's namespace).
    pub fn key(&self) -> &str {
        self.hold().entry.strategy_key()
    }

    /// Whether the update this handle belongs to is still running. Handles from
    /// [`Context::session_owned`](crate::Context::session_owned) can outlive it; what they
    /// write then is reported and not saved by that update.
    pub fn is_live(&self) -> bool {
        !self.hold().finished.load(Ordering::Acquire)
    }

    /// Whether this update was recognised as a delivery of one whose session writes are
    /// saved already (ARCHITECTURE.md, "Redelivery"): its writes are not applied again, and
    /// effects outside the session (a reply sent) are the handler's to skip.
    pub fn is_redelivery(&self) -> bool {
        self.hold().is_replay()
    }

    fn check_live(&self, what: &'static str) {
        if self.is_live() {
            return;
        }
        self.hold().sessions.stats.add(Count::LateAccesses, 1);
        tracing::error!(
            session = S::NAME,
            key = self.key(),
            access = what,
            "session used after its update was persisted; this update will not save it"
        );
    }

    /// Runs `f` on the current value. `index` is the stored field being read, if one is:
    /// reads never mark anything dirty, but they are remembered for stale-write detection.
    pub fn read<R>(&self, index: Option<usize>, f: impl FnOnce(&S) -> R) -> R {
        self.check_live("read");
        let hold = self.hold();
        let mut state = hold.entry.lock();
        if let Some(index) = index {
            hold.marks[index]
                .seen
                .store(state.fields[index].version, Ordering::Relaxed);
            hold.note_read(&mut state, index);
        }
        f(&state.value)
    }

    /// Overwrites stored field `index` with `f` (a `set_*`). If another update changed the
    /// field after this one last read it, the write is stale (ARCHITECTURE.md, "Stale writes"): it is counted and
    /// logged, and in strict mode the update ends with [`SessionError::StaleWrite`].
    pub fn set(&self, index: usize, f: impl FnOnce(&mut S)) {
        self.check_live("write");
        let hold = self.hold();
        if hold.is_replay() {
            return; // saved by an earlier delivery of this update
        }
        let mut state = hold.entry.lock();
        let seen = hold.marks[index].seen.load(Ordering::Relaxed);
        if seen != 0 && seen != state.fields[index].version {
            self.report_stale(index);
            if hold.sessions.stale == StalePolicy::Retry && hold.retried {
                return; // refused: the update runs again on the newer value
            }
        }
        hold.remember(&state, index);
        f(&mut state.value);
        let version = state.bump(index, Dirty::Set);
        hold.wrote_field(&mut state, index, version);
    }

    /// Changes stored field `index` in place with `f` (an `update_*`): an atomic
    /// read-modify-write that is never stale.
    pub fn update<R>(&self, index: usize, f: impl FnOnce(&mut S) -> R) -> R {
        self.check_live("write");
        let hold = self.hold();
        let mut state = hold.entry.lock();
        if hold.is_replay() {
            // Saved by an earlier delivery of this update: `f` runs for what it returns, and
            // the field is put back as it was.
            let before = state.save_field(index);
            let out = f(&mut state.value);
            state.set_from(index, before.as_deref());
            return out;
        }
        hold.note_read(&mut state, index);
        hold.remember(&state, index);
        let out = f(&mut state.value);
        let version = state.bump(index, Dirty::Set);
        hold.wrote_field(&mut state, index, version);
        out
    }

    /// Changes fields that are not saved (`#[session(skip)]`); nothing is marked.
    pub fn update_transient<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        self.check_live("write");
        f(&mut self.hold().entry.lock().value)
    }

    /// Sets stored field `index` back to its default and removes it from the store, so it
    /// follows the default from now on.
    pub fn reset(&self, index: usize) {
        self.check_live("write");
        let hold = self.hold();
        if hold.is_replay() {
            return;
        }
        let mut state = hold.entry.lock();
        hold.remember(&state, index);
        state.value.reset_field(index);
        let version = state.bump(index, Dirty::Remove);
        hold.wrote_field(&mut state, index, version);
    }

    /// Replaces the whole value; every stored field is marked, and only those whose
    /// encoding changed are written.
    pub fn replace(&self, value: S) {
        self.check_live("write");
        let hold = self.hold();
        if hold.is_replay() {
            return;
        }
        let mut state = hold.entry.lock();
        for index in 0..S::FIELDS.len() {
            hold.remember(&state, index);
        }
        state.value = value;
        for index in 0..S::FIELDS.len() {
            let version = state.bump(index, Dirty::Set);
            hold.wrote_field(&mut state, index, version);
        }
    }

    /// Deletes the session from the store at save (Telegraf's `ctx.session = null`); from
    /// now on reads see the defaults, and writes start a new record.
    pub fn clear(&self) {
        self.check_live("clear");
        let hold = self.hold();
        if hold.is_replay() {
            return;
        }
        let mut state = hold.entry.lock();
        for index in 0..S::FIELDS.len() {
            hold.remember(&state, index);
        }
        if let Some(undo) = &hold.undo {
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
            hold.wrote(index, version);
        }
    }

    /// A copy of the whole current value.
    pub fn snapshot(&self) -> S
    where
        S: Clone,
    {
        self.check_live("read");
        let hold = self.hold();
        let mut state = hold.entry.lock();
        for index in 0..S::FIELDS.len() {
            hold.note_read(&mut state, index);
        }
        state.value.clone()
    }

    fn report_stale(&self, index: usize) {
        let hold = self.hold();
        let field = S::FIELDS[index].name;
        hold.sessions.stats.add(Count::StaleWrites, 1);
        tracing::warn!(
            session = S::NAME,
            key = self.key(),
            field,
            "stale write: another update changed this field after this update read it; use update_* for read-modify-write"
        );
        let refused = hold.sessions.stale == StalePolicy::Retry && hold.retried;
        if refused || hold.sessions.stale == StalePolicy::Error {
            let _ = hold.stale.set(field);
        }
    }
}
