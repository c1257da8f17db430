//! Live sessions shared between the concurrent updates of one key (DESIGN S3).
//!
//! The registry maps a key to its [`Entry`] while at least one update holds it. An update
//! takes a hold on its first session access and gives it back only after its persist has
//! finished, so an update that arrives while an earlier one is still writing joins the same
//! entry and sees that write, never the older stored value.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, OnceCell};
use tracing::Instrument;

use crate::error::SessionError;
use crate::session::Session;
use crate::store::Store;

/// Whether a field differs from what the store holds, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dirty {
    /// Nothing to write.
    Clean,
    /// Write the current value.
    Set,
    /// Remove the field from the store (it went back to its default with `reset_*`).
    Remove,
}

/// Per persisted field: its version, its dirtiness, and what the store holds for it.
#[derive(Debug)]
pub(crate) struct FieldState {
    /// Bumped on every write; a holder compares it with the version it last saw.
    pub version: u64,
    pub dirty: Dirty,
    /// The encoded value the store holds, `None` when it holds nothing for this field.
    pub stored: Option<String>,
    /// The version the persist under way is writing (there is at most one per entry, behind
    /// its write gate), and whether it sets rather than removes the field.
    pub in_flight: Option<(u64, bool)>,
}

/// The live value of one key and its bookkeeping.
pub(crate) struct State<S> {
    pub value: S,
    pub fields: Box<[FieldState]>,
    clock: u64,
    /// `clear()` was called and the record is still to be deleted.
    pub delete_pending: bool,
    /// Counts `clear()` calls, so a delete that raced a newer clear does not reset the flag.
    pub clear_epoch: u64,
}

impl<S> State<S> {
    /// Whether anything here still has to reach the store.
    pub fn has_changes(&self) -> bool {
        self.delete_pending || self.fields.iter().any(|f| f.dirty != Dirty::Clean)
    }

    /// Forgets what a persist that did not complete was writing: those fields stay dirty.
    pub fn forget_in_flight(&mut self) {
        for field in self.fields.iter_mut() {
            field.in_flight = None;
        }
    }

    /// Records a write of field `index` and returns its new version.
    pub fn bump(&mut self, index: usize, dirty: Dirty) -> u64 {
        self.clock += 1;
        let field = &mut self.fields[index];
        field.version = self.clock;
        field.dirty = dirty;
        self.clock
    }
}

thread_local! {
    /// The entry whose state lock this thread holds, to turn a re-entrant call (a handle
    /// method called from inside a `with_*`/`update_*` closure) into a clear panic instead of
    /// a silent deadlock.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// The state lock of an entry; see [`Entry::lock`].
pub(crate) struct StateGuard<'a, S> {
    guard: MutexGuard<'a, State<S>>,
    previous: usize,
}

impl<S> std::ops::Deref for StateGuard<'_, S> {
    type Target = State<S>;
    fn deref(&self) -> &State<S> {
        &self.guard
    }
}

impl<S> std::ops::DerefMut for StateGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut State<S> {
        &mut self.guard
    }
}

impl<S> Drop for StateGuard<'_, S> {
    fn drop(&mut self) {
        HELD.set(self.previous);
    }
}

/// One live session.
pub(crate) struct Entry<S> {
    pub key: Arc<str>,
    loaded: OnceCell<()>,
    state: Mutex<State<S>>,
    /// Held for the whole of a persist, so the patches of one key never reorder (S5).
    pub write_gate: tokio::sync::Mutex<()>,
}

impl<S: Session> Entry<S> {
    fn new(key: Arc<str>) -> Self {
        let fields = S::FIELDS
            .iter()
            .map(|_| FieldState {
                version: 1,
                dirty: Dirty::Clean,
                stored: None,
                in_flight: None,
            })
            .collect();
        Entry {
            key,
            loaded: OnceCell::new(),
            state: Mutex::new(State {
                value: S::default(),
                fields,
                clock: 1,
                delete_pending: false,
                clear_epoch: 0,
            }),
            write_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Locks the live state.
    ///
    /// # Panics
    ///
    /// When this thread already holds the lock of this entry: a handle method was called from
    /// inside a closure given to another method of the same session. That would deadlock.
    pub fn lock(&self) -> StateGuard<'_, S> {
        let me = self as *const Self as usize;
        assert!(
            HELD.get() != me,
            "session `{}` of key {:?}: a session method was called from inside a closure passed to \
             with_*/update_* of the same session; read or change the other field after the closure returns",
            S::NAME,
            self.key
        );
        let previous = HELD.replace(me);
        StateGuard {
            guard: self.state.lock(),
            previous,
        }
    }

    /// Loads the stored record once, however many holders ask at the same time (single
    /// flight). A failed load is retried by the next access.
    pub async fn ensure_loaded(
        &self,
        store: &dyn Store,
        loads: &AtomicU64,
    ) -> Result<(), SessionError> {
        self.loaded
            .get_or_try_init(|| {
                loads.fetch_add(1, Ordering::Relaxed);
                self.load(store)
            })
            .await
            .map(|_| ())
    }

    async fn load(&self, store: &dyn Store) -> Result<(), SessionError> {
        let span = tracing::debug_span!("session.load", session = S::NAME, key = &*self.key);
        let record = store
            .load(&self.key)
            .instrument(span)
            .await
            .map_err(|source| SessionError::Load {
                session: S::NAME,
                key: self.key.to_string(),
                source,
            })?;
        let Some(mut record) = record else {
            return Ok(());
        };
        let verbatim = store.returns_written_text();
        let mut value = S::default();
        let mut stored: Vec<Option<String>> = Vec::with_capacity(S::FIELDS.len());
        for (index, spec) in S::FIELDS.iter().enumerate() {
            let Some(raw) = record.remove(spec.name) else {
                stored.push(None);
                continue;
            };
            if let Err(source) = value.decode_field(index, &raw) {
                if !spec.reset_on_error {
                    return Err(SessionError::Decode {
                        session: S::NAME,
                        key: self.key.to_string(),
                        field: spec.name,
                        source,
                    });
                }
                tracing::warn!(
                    session = S::NAME,
                    key = &*self.key,
                    field = spec.name,
                    error = %source,
                    "stored field cannot be decoded; using its default"
                );
                // Keep the undecodable text as what the store holds: any write replaces it.
                value.reset_field(index);
                stored.push(Some(raw));
                continue;
            }
            // What the store holds, in this crate's encoding, so "unchanged" compares equal.
            stored.push(if verbatim {
                Some(raw)
            } else {
                value.encode_field(index).ok()
            });
        }
        let mut state = self.lock();
        state.value = value;
        for (field, raw) in state.fields.iter_mut().zip(stored) {
            field.stored = raw;
        }
        Ok(())
    }
}

struct Live<S> {
    entry: Arc<Entry<S>>,
    holders: usize,
    /// Its last persist failed: it is kept, dirty fields and all, until one succeeds.
    unsaved: bool,
}

struct Entries<S> {
    by_key: HashMap<Arc<str>, Live<S>>,
    /// How many entries have at least one holder.
    held: usize,
}

/// The live entries of one session middleware, by key.
pub(crate) struct Registry<S> {
    entries: Mutex<Entries<S>>,
    idle: Notify,
}

impl<S: Session> Registry<S> {
    pub fn new() -> Self {
        Registry {
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                held: 0,
            }),
            idle: Notify::new(),
        }
    }

    /// Takes a hold on the entry of `key`, creating it if no update holds it.
    pub fn acquire(&self, key: &Arc<str>) -> Arc<Entry<S>> {
        if let Some(entry) = self.hold_existing(&mut self.entries.lock(), key) {
            return entry;
        }
        // Build the entry (which runs the user's defaults) outside the lock.
        let fresh = Arc::new(Entry::new(Arc::clone(key)));
        let mut entries = self.entries.lock();
        if let Some(entry) = self.hold_existing(&mut entries, key) {
            return entry;
        }
        entries.by_key.insert(
            Arc::clone(key),
            Live {
                entry: Arc::clone(&fresh),
                holders: 1,
                unsaved: false,
            },
        );
        entries.held += 1;
        fresh
    }

    fn hold_existing(&self, entries: &mut Entries<S>, key: &str) -> Option<Arc<Entry<S>>> {
        let live = entries.by_key.get_mut(key)?;
        live.holders += 1;
        let entry = Arc::clone(&live.entry);
        if live.holders == 1 {
            entries.held += 1;
        }
        Some(entry)
    }

    /// Gives back a hold. The entry is dropped with its last holder, unless that holder's
    /// persist failed (`unsaved`): then it stays, so its changes are not lost.
    pub fn release(&self, entry: &Arc<Entry<S>>, unsaved: bool) {
        let mut entries = self.entries.lock();
        let Some(live) = entries.by_key.get_mut(&entry.key) else {
            return;
        };
        if !Arc::ptr_eq(&live.entry, entry) || live.holders == 0 {
            return;
        }
        live.holders -= 1;
        live.unsaved = unsaved;
        if live.holders > 0 {
            return;
        }
        if !unsaved {
            entries.by_key.remove(&entry.key);
        }
        entries.held -= 1;
        if entries.held == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Holds every entry whose last persist failed and no update holds, to retry it.
    pub fn hold_unsaved(&self) -> Vec<Arc<Entry<S>>> {
        let mut entries = self.entries.lock();
        let mut held = Vec::new();
        for live in entries.by_key.values_mut() {
            if live.unsaved && live.holders == 0 {
                live.holders = 1;
                held.push(Arc::clone(&live.entry));
            }
        }
        entries.held += held.len();
        held
    }

    /// The number of live entries, unsaved ones included.
    pub fn len(&self) -> usize {
        self.entries.lock().by_key.len()
    }

    /// The number of entries kept only because their last persist failed.
    pub fn unsaved(&self) -> usize {
        let entries = self.entries.lock();
        entries.by_key.len() - entries.held
    }

    /// Waits until no update holds an entry.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.entries.lock().held == 0 {
                return;
            }
            notified.await;
        }
    }
}
