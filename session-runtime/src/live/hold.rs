//! One update's [`Slot`] for a session, and the [`Hold`] on a live session made in it on first
//! use: its turn in exclusive mode, its lease, which versions it saw, what it changed (to take
//! back), and what became of its writes. The [`SessionRef`](crate::live::SessionRef) that
//! typed handles wrap reaches the session through it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clock::Later;
use crate::config::{ErrorPolicy, SaveFailurePolicy, StalePolicy};
use crate::error::{SessionError, SessionKey};
use crate::inline_key::InlineKey;
use crate::live::entry::Entry;
use crate::live::lease;
use crate::live::sessions::Sessions;
use crate::live::state::{Fate, State};
use crate::schema::Schema;
use crate::stats::Count;

/// One update's place for session `S`, from before its handlers run until nothing refers to it
/// any more. Its [`Hold`] is made in it, on the session's first use: an update that never
/// touches the session costs no store I/O, and one that does one allocation for both.
pub(crate) struct Slot<S: Schema> {
    sessions: Arc<Sessions<S>>,
    pub(crate) key: Option<InlineKey>,
    /// Whoever runs this update delivers it again when told to.
    retried: bool,
    /// The update's own id, the same on every delivery, where it has one.
    update_id: Option<i64>,
    /// Whether the update ended: later accesses are late. Taken while the hold is made, so
    /// that no hold is made after the end.
    ended: Mutex<bool>,
    hold: OnceLock<Hold<S>>,
}

impl<S: Schema> Slot<S> {
    /// The slot of the update whose key is `key` (`None`: it has none).
    pub(crate) fn new(
        sessions: &Arc<Sessions<S>>,
        key: Option<InlineKey>,
        update_id: Option<i64>,
    ) -> Self {
        Slot {
            sessions: Arc::clone(sessions),
            key,
            retried: true,
            update_id,
            ended: Mutex::new(false),
            hold: OnceLock::new(),
        }
    }

    /// For runners that never deliver an update twice: nothing of it is taken back.
    pub(crate) fn run_once(&mut self) {
        self.retried = false;
    }

    /// The hold of this update, taken and loaded on first use.
    pub(crate) async fn hold(&self) -> Result<&Hold<S>, SessionError> {
        let hold = {
            let ended = self.ended.lock();
            if *ended {
                return Err(SessionError::AfterSave {
                    session: S::NAME,
                    key: self
                        .key
                        .as_ref()
                        .map(|key| SessionKey::of_stored(key.as_str(), S::NAMESPACE))
                        .unwrap_or_default(),
                });
            }
            let Some(key) = &self.key else {
                return Err(SessionError::NoKey {
                    session: S::NAME,
                    strategy: self.sessions.strategy,
                });
            };
            self.hold.get_or_init(|| {
                let entry = self
                    .sessions
                    .registry
                    .acquire_inline(key, &*self.sessions.store);
                Hold::new(
                    Arc::clone(&self.sessions),
                    entry,
                    self.retried,
                    self.update_id,
                )
            })
        };
        // Exclusive mode and loading are boxed: most accesses need neither, and this future
        // is built per access.
        if let Some(wait) = self.sessions.exclusive {
            Box::pin(hold.take_turn(wait)).await?;
        }
        hold.entry
            .ensure_loaded(&*self.sessions.store, &self.sessions.stats)
            .await?;
        hold.check_redelivery();
        Ok(hold)
    }

    /// The hold, once made (by [`hold`](Self::hold)).
    pub(crate) fn made(&self) -> Option<&Hold<S>> {
        self.hold.get()
    }

    /// Marks the slot ended and hands out its hold, finished, if the session was used (once:
    /// a second end gets `None`). Later accesses get [`SessionError::AfterSave`].
    pub(crate) fn end(&self) -> Option<&Hold<S>> {
        let first = !std::mem::replace(&mut *self.ended.lock(), true);
        let hold = self.hold.get().filter(|_| first)?;
        hold.finished.store(true, Ordering::Release);
        Some(hold)
    }
}

/// What one update needs to take its writes back (under [`ErrorPolicy::Discard`], after a
/// failed save, a stale write): the values before its first write of each field that the
/// store does not hold (a field already dirty then, or any field under `Discard`, which takes
/// back saved writes too). A field that was clean is restored from what the store holds, so
/// the usual update encodes nothing and allocates nothing here.
#[derive(Default)]
pub(super) struct Undo {
    /// Field index and its encoding before this update's first write (`None`: not encodable).
    befores: Vec<(usize, Option<String>)>,
    /// `delete_pending` before this update's first `clear()`, and the epoch of its last one.
    pub(super) clear: Option<(bool, u64)>,
}

/// What an update did with one stored field, by local version (0: nothing).
#[derive(Default)]
pub(super) struct Marks {
    /// Last read or written.
    pub(super) seen: AtomicU64,
    /// Last set, updated, reset or replaced (not cleared).
    written: AtomicU64,
    /// Last changed in any way, `clear()` included: what taking back looks for.
    changed: AtomicU64,
    /// Read by a getter, `with_*` or `update_*` (counted once in the field's readers).
    read: AtomicBool,
}

/// A hold's [`Marks`], one per stored field: inside the hold for the few fields most
/// sessions have, so that taking a hold is one allocation.
pub(super) enum PerField {
    Few([Marks; FEW], usize),
    Many(Box<[Marks]>),
}

/// The most fields whose marks a hold keeps inline.
const FEW: usize = 4;

impl PerField {
    fn new(fields: usize) -> Self {
        if fields <= FEW {
            PerField::Few(Default::default(), fields)
        } else {
            PerField::Many((0..fields).map(|_| Marks::default()).collect())
        }
    }
}

impl std::ops::Deref for PerField {
    type Target = [Marks];

    fn deref(&self) -> &[Marks] {
        match self {
            PerField::Few(marks, len) => &marks[..*len],
            PerField::Many(marks) => marks,
        }
    }
}

/// What became of one update's own writes (ARCHITECTURE.md, "Exactly once").
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Writes {
    /// It wrote nothing.
    None,
    /// All of them are in the store (saved by its own patch or by another update's).
    Saved,
    /// Some are not written yet, and none was taken back.
    Pending,
    /// These fields' writes were taken back: the store refused them or was never sent them
    /// (`sure`), or a save that carried them failed, so the store may hold them.
    Discarded {
        fields: Vec<&'static str>,
        sure: bool,
    },
}

/// Whether a hold's update is a redelivery: not known yet, no, yes.
const UNCHECKED: u8 = 0;
const FRESH: u8 = 1;
const REPLAYED: u8 = 2;

/// One update's hold on a live entry.
pub(crate) struct Hold<S: Schema> {
    pub(crate) sessions: Arc<Sessions<S>>,
    pub(crate) entry: Arc<Entry<S>>,
    /// Per stored field, what this update did with it.
    pub(super) marks: PerField,
    pub(super) undo: Option<Mutex<Undo>>,
    pub(super) stale: OnceLock<&'static str>,
    pub(crate) finished: AtomicBool,
    /// Whoever runs the update delivers it again when told to: its writes may be refused
    /// (a stale write) or taken back (a failed save) to have it run again.
    pub(crate) retried: bool,
    /// The update's own id, recorded as the writer of what it writes.
    update_id: Option<i64>,
    /// Known once the session is loaded ([`UNCHECKED`], [`FRESH`] or [`REPLAYED`]): whether
    /// a field still holds this update's id as its writer, so that an earlier delivery was
    /// saved and its writes are not applied again.
    replayed: AtomicU8,
    /// In exclusive mode: taken once, on the first access; given back when the update ends.
    turn_taken: tokio::sync::OnceCell<()>,
    turn: Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
    /// In exclusive mode across processes: the lease this update holds in the store (`None`
    /// inside once released), and the task renewing it.
    lease: Option<lease::Held>,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<S: Schema> Hold<S> {
    pub(crate) fn new(
        sessions: Arc<Sessions<S>>,
        entry: Arc<Entry<S>>,
        retried: bool,
        update_id: Option<i64>,
    ) -> Self {
        let undo = (sessions.on_error == ErrorPolicy::Discard
            || sessions.save_failure == SaveFailurePolicy::Retry
            || sessions.stale == StalePolicy::Retry)
            .then(Mutex::default);
        Hold {
            marks: PerField::new(S::FIELDS.len()),
            undo,
            stale: OnceLock::new(),
            finished: AtomicBool::new(false),
            retried,
            update_id,
            replayed: AtomicU8::new(UNCHECKED),
            turn_taken: tokio::sync::OnceCell::new(),
            turn: Mutex::new(None),
            lease: sessions
                .lease
                .as_ref()
                .map(|_| Arc::new(tokio::sync::Mutex::new(None))),
            renewer: Mutex::new(None),
            sessions,
            entry,
        }
    }

    /// In exclusive mode, waits until no other update of this process holds the key, and
    /// across processes until this one holds the key's lease in the store (at most `wait` in
    /// all), then holds the key until [`release`](Self::release).
    pub(crate) async fn take_turn(&self, wait: Duration) -> Result<(), SessionError> {
        self.turn_taken
            .get_or_try_init(|| async {
                let started = Instant::now();
                let turn = Arc::clone(&self.entry.turn);
                let Ok(guard) = tokio::time::timeout(wait, turn.lock_owned()).await else {
                    return Err(SessionError::Busy {
                        session: S::NAME,
                        key: self.entry.session_key(),
                        waited: wait,
                    });
                };
                *self.turn.lock() = Some(guard);
                if let Err(error) = self.take_lease((started, started.later(wait))).await {
                    // The next access starts over.
                    self.turn.lock().take();
                    return Err(error);
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Across processes: takes the key's lease (which loads the session), or the one the
    /// last update of the key in this process kept, and starts renewing it.
    async fn take_lease(&self, wait: (Instant, Instant)) -> Result<(), SessionError> {
        let (Some(held), Some(terms)) = (&self.lease, &self.sessions.lease) else {
            return Ok(());
        };
        let sessions = &self.sessions;
        let lease = match self.entry.kept_lease() {
            Some(lease) => lease,
            None => {
                self.entry
                    .take_lease(
                        &*sessions.store,
                        terms,
                        sessions.expiry.ttl,
                        wait,
                        &sessions.stats,
                    )
                    .await?
            }
        };
        *held.lock().await = Some(lease);
        let renewal = lease::renew(
            Arc::clone(held),
            Arc::clone(&sessions.store),
            Arc::clone(&self.entry.key),
            sessions.expiry.ttl,
        );
        *self.renewer.lock() = Some(tokio::spawn(renewal));
        Ok(())
    }

    /// Whether a failed save takes this update's writes back, so that it can run again.
    pub(crate) fn takes_back(&self) -> bool {
        self.retried && self.sessions.save_failure == SaveFailurePolicy::Retry
    }

    /// Writes what the entry has unsaved; under a lease, releases it in the same patch, or
    /// keeps it for the next update of the key.
    pub(crate) async fn persist(&self) -> Result<(), SessionError> {
        // Taken before the renewer is stopped: a renewal under way finishes first, and the
        // version it wrote is the one the patch expects.
        let mut lease = match &self.lease {
            Some(held) => {
                let lease = held.lock().await;
                if let Some(renewer) = self.renewer.lock().take() {
                    renewer.abort();
                }
                Some(lease)
            }
            None => None,
        };
        let sessions = &self.sessions;
        let persisted = self
            .entry
            .persist(
                &*sessions.store,
                &sessions.expiry,
                &sessions.stats,
                lease.as_mut().and_then(|lease| lease.as_mut()),
                self.takes_back(),
            )
            .await;
        if persisted.is_ok()
            && let Some(lease) = lease.as_mut().and_then(|lease| lease.take())
            && lease.kept_after(Instant::now())
        {
            self.entry.keep_lease(lease);
        }
        persisted
    }

    /// Once the session is loaded: whether a field still holds this update's id as its
    /// writer, that is, whether an earlier delivery of it was saved.
    pub(crate) fn check_redelivery(&self) {
        let Some(id) = self.update_id else { return };
        if self.replayed.load(Ordering::Acquire) != UNCHECKED {
            return;
        }
        let state = self.entry.lock();
        let saved = state.recent.contains(id) || state.fields.iter().any(|f| f.writer == Some(id));
        drop(state);
        let found = if saved { REPLAYED } else { FRESH };
        // Two handles of the update may check at once: one decides, and counts.
        if self
            .replayed
            .compare_exchange(UNCHECKED, found, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && saved
        {
            self.sessions.stats.add(Count::Redeliveries, 1);
            tracing::info!(
                session = S::NAME,
                key = &*self.entry.key,
                update_id = id,
                "a delivery of an update whose writes are saved already: they are not applied again"
            );
        }
    }

    /// Whether this update was recognised as a delivery of one saved before.
    pub(crate) fn is_replay(&self) -> bool {
        self.replayed.load(Ordering::Acquire) == REPLAYED
    }

    /// Gives the entry back to the registry (kept if `unsaved`) and lets the next update of
    /// the key have its turn: the update is over.
    pub(crate) fn release(&self, unsaved: bool) {
        if let Some(renewer) = self.renewer.lock().take() {
            renewer.abort();
        }
        self.forget_reads();
        self.sessions.registry.release(&self.entry, unsaved);
        self.turn.lock().take();
    }

    /// Counts field `index` as read by this update, once: the patches written while it runs
    /// expect the version it read.
    pub(super) fn note_read(&self, state: &mut State<S>, index: usize) {
        if !self.finished.load(Ordering::Acquire)
            && !self.marks[index].read.swap(true, Ordering::Relaxed)
        {
            state.fields[index].readers += 1;
        }
    }

    /// The update is over: its reads no longer hold any patch to their versions.
    fn forget_reads(&self) {
        if !self.marks.iter().any(|m| m.read.load(Ordering::Relaxed)) {
            return;
        }
        let mut state = self.entry.lock();
        for (index, marks) in self.marks.iter().enumerate() {
            if marks.read.swap(false, Ordering::Relaxed) {
                let field = &mut state.fields[index];
                field.readers = field.readers.saturating_sub(1);
            }
        }
    }

    /// The first field this update wrote stale, when stale writes are errors.
    pub(crate) fn stale_field(&self) -> Option<&'static str> {
        self.stale.get().copied()
    }

    /// Remembers field `index` before this update's first change of it, where the store does
    /// not hold that value (see [`Undo`]).
    pub(super) fn remember(&self, state: &State<S>, index: usize) {
        let Some(undo) = &self.undo else { return };
        if self.marks[index].changed.load(Ordering::Relaxed) != 0 {
            return; // not the first change
        }
        if self.sessions.on_error == ErrorPolicy::Discard || state.is_dirty(index) {
            undo.lock().befores.push((index, state.save_field(index)));
        }
    }

    pub(super) fn wrote(&self, index: usize, version: u64) {
        self.marks[index].seen.store(version, Ordering::Relaxed);
        self.marks[index].changed.store(version, Ordering::Relaxed);
    }

    /// What became of this update's writes: each field's last write by it is saved, pending,
    /// or was taken back.
    pub(crate) fn writes(&self) -> Writes {
        let state = self.entry.lock();
        let (mut any, mut pending, mut sure) = (false, false, true);
        let mut discarded = Vec::new();
        for (index, spec) in S::FIELDS.iter().enumerate() {
            let written = self.marks[index].written.load(Ordering::Relaxed);
            if written == 0 {
                continue;
            }
            any = true;
            match state.fields[index].fate(written) {
                Fate::Saved => {}
                Fate::Pending => pending = true,
                Fate::Discarded { sure: known } => {
                    discarded.push(spec.name);
                    sure &= known;
                }
            }
        }
        if !discarded.is_empty() {
            Writes::Discarded {
                fields: discarded,
                sure,
            }
        } else if pending {
            Writes::Pending
        } else if any {
            Writes::Saved
        } else {
            Writes::None
        }
    }

    /// Records a write of field `index` by this update.
    pub(super) fn wrote_field(&self, state: &mut State<S>, index: usize, version: u64) {
        self.marks[index].written.store(version, Ordering::Relaxed);
        match self.update_id {
            Some(id) => state.fields[index].written_by(version, id),
            None => state.fields[index].wrote_by = None,
        }
        self.wrote(index, version);
    }

    /// Takes back this update's writes that are not in the store, so that it can run again:
    /// what is restored equals what the store holds, and needs no write.
    pub(crate) fn take_back(&self) {
        self.revert(true);
        self.entry.lock().settle();
    }

    /// Takes back this update's writes that no other update has overwritten since (and, with
    /// `unsaved_only`, that are not in the store yet). The restored fields are marked, so the
    /// save that follows writes them only if the store holds something else.
    pub(crate) fn revert(&self, unsaved_only: bool) {
        let Some(undo) = &self.undo else { return };
        let undo = std::mem::take(&mut *undo.lock());
        let mut state = self.entry.lock();
        for (index, marks) in self.marks.iter().enumerate() {
            let changed = marks.changed.swap(0, Ordering::Relaxed);
            let field = &state.fields[index];
            if changed == 0 || field.version != changed || (unsaved_only && field.is_saved(changed))
            {
                continue;
            }
            match undo.befores.iter().find(|(i, _)| *i == index) {
                Some((_, Some(before))) => {
                    state.restore_field(index, before);
                }
                Some((_, None)) => {}
                None => state.restore_stored(index),
            }
            // Its write is gone: no patch records this update for it.
            marks.written.store(0, Ordering::Relaxed);
            if let Some(id) = self.update_id {
                state.fields[index].unwritten_by(id);
            }
        }
        if let Some((before, epoch)) = undo.clear
            && state.clear_epoch == epoch
        {
            state.delete_pending = before;
        }
    }
}
