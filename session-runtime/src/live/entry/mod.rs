//! One live session under its locks: loading and decoding the stored record (and merging it
//! after a conflict), the lease claim, erasure and renewal; `save` writes what changed
//! (ARCHITECTURE.md, "Dirty tracking" and "Save after the chain").

mod save;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::clock::Later;
use crate::error::{SessionError, SessionKey, StoreError, without_namespace};
use crate::live::expiry::Expiry;
use crate::live::lease::{self, Lease, Terms};
use crate::live::migrate::{self, Mark};
use crate::live::state::{Dirty, FieldState, State};
use crate::live::window::{Signer, Window};
use crate::schema::Schema;
use crate::stats::{Count, Latency, Stats};
use crate::store::{Patch, Record, Revision, Store};
use save::Attempt;

/// What the store holds of one field: its encoding, version and writer.
pub(crate) struct Stored {
    raw: Option<String>,
    version: u64,
    writer: Option<i64>,
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

/// Waits `pause` before polling for a lease again, never longer than `at_most` (the lease's
/// end, the deadline), and doubles it up to 25 ms for the next time.
async fn back_off(pause: &mut Duration, at_most: Duration) {
    tokio::time::sleep((*pause).min(at_most)).await;
    *pause = (*pause * 2).min(Duration::from_millis(25));
}

/// One live session.
pub(crate) struct Entry<S> {
    pub(crate) key: Arc<str>,
    loaded: OnceCell<()>,
    state: Mutex<State<S>>,
    /// Held for the whole of a save, so the patches of one key never reorder.
    write_gate: tokio::sync::Mutex<()>,
    /// Save attempts begun so far, and how the last one ended: an update that waited at
    /// the gate while an attempt carrying its writes ran takes that outcome instead of making
    /// the same attempt again (waits for a slow store do not add up per waiting update).
    attempts: AtomicU64,
    last_attempt: Mutex<Option<Attempt>>,
    /// In exclusive mode, held by the one update of this key that may use it.
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
    /// Across processes, the lease an update left for the next one of this key in this
    /// process (ARCHITECTURE.md, "Exclusive mode"): while it is live, what the entry holds
    /// is what the store holds, and the next update neither loads nor claims. Boxed: most
    /// entries never keep one, and every entry carries the field.
    kept: Mutex<Option<Box<Lease>>>,
    /// The store's revision of the record that what this entry holds as stored was read from
    /// or written to; [`Revision::Unknown`] when it may differ from the store. An entry no
    /// update holds is kept, decoded, while the store's revision is still this one
    /// (ARCHITECTURE.md, "Decoded between updates").
    seen: Mutex<Revision>,
    /// How the middleware signs the patches it sends (see [`send`](Self::send)).
    signer: Arc<Signer>,
}

impl<S: Schema> Entry<S> {
    pub(crate) fn new(key: Arc<str>, signer: Arc<Signer>) -> Self {
        let fields = S::FIELDS.iter().map(|_| FieldState::new()).collect();
        Entry {
            key,
            loaded: OnceCell::new(),
            state: Mutex::new(State {
                value: S::default(),
                fields,
                clock: 1,
                delete_pending: false,
                clear_epoch: 0,
                recent: Window::default(),
                schema: Mark::default(),
                ids: Vec::new(),
            }),
            write_gate: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_attempt: Mutex::new(None),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            kept: Mutex::new(None),
            seen: Mutex::new(Revision::Unknown),
            signer,
        }
    }

    /// The key as the key strategy made it: the stored key without the type's namespace.
    pub(crate) fn strategy_key(&self) -> &str {
        without_namespace(&self.key, S::NAMESPACE)
    }

    /// The key as the key strategy made it, for errors.
    pub(crate) fn session_key(&self) -> SessionKey {
        SessionKey::from(self.strategy_key())
    }

    /// Whether the entry holds the stored record (a load or a lease claim read it).
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.initialized()
    }

    /// The revision of the record this entry holds as stored, if it is known.
    pub(crate) fn seen(&self) -> Revision {
        *self.seen.lock()
    }

    /// Reads the whole record, and records the revision it was read at when the store can
    /// tell it ([`Store::load_with_revision`]).
    async fn read(&self, store: &dyn Store) -> Result<Option<Record>, StoreError> {
        let read = store.load_with_revision(&self.key).await;
        let (record, revision) = match read {
            Ok((record, revision)) => (Ok(record), revision),
            Err(error) => (Err(error), Revision::Unknown),
        };
        *self.seen.lock() = revision;
        record
    }

    /// Forgets the revision: what the entry holds as stored may differ from the store.
    fn unseen(&self) {
        *self.seen.lock() = Revision::Unknown;
    }

    /// Locks the live state.
    ///
    /// # Panics
    ///
    /// When this thread already holds the lock of this entry: a handle method was called from
    /// inside a closure given to another method of the same session. That would deadlock.
    pub(crate) fn lock(&self) -> StateGuard<'_, S> {
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
    pub(crate) async fn ensure_loaded(
        &self,
        store: &dyn Store,
        stats: &Stats,
    ) -> Result<(), SessionError> {
        if self.loaded.initialized() {
            return Ok(());
        }
        // Boxed: an entry kept decoded between updates never loads again, and this future is
        // built on every access.
        Box::pin(self.loaded.get_or_try_init(|| {
            stats.add(Count::Loads, 1);
            self.load(store, stats)
        }))
        .await
        .map(|_| ())
    }

    async fn load(&self, store: &dyn Store, stats: &Stats) -> Result<(), SessionError> {
        let span = tracing::debug_span!(
            "session.load",
            session = S::NAME,
            key = &*self.key,
            outcome = tracing::field::Empty
        );
        let timer = stats.start();
        let loaded = self.read(store).instrument(span.clone()).await;
        stats.took(Latency::Load, timer);
        span.record(
            "outcome",
            match &loaded {
                Ok(Some(_)) => "found",
                Ok(None) => "none",
                Err(error) if error.is_deadline() => "deadline",
                Err(_) => "error",
            },
        );
        let record = loaded.map_err(|source| {
            if source.is_deadline() {
                stats.add(Count::Deadlines, 1);
            }
            SessionError::Load {
                session: S::NAME,
                key: self.session_key(),
                source: Box::new(source),
            }
        })?;
        let Some(record) = record else {
            return Ok(());
        };
        self.fill(record, store.returns_written_text())
            .map_err(|error| *error)
    }

    /// Takes a record read from the store as the live state of an entry nothing has used yet.
    /// Migrates it to the type's version first; the fields that changed are left dirty, to be
    /// written back with the update's patch.
    fn fill(&self, mut record: Record, verbatim: bool) -> Result<(), Box<SessionError>> {
        let recent = Window::of(&record);
        let schema = Mark::of::<S>(&record);
        let migrated = migrate::migrate::<S>(&self.key, &mut record)?;
        // Whether each changed field is set (or removed) in the migrated record.
        let migrated: Vec<(String, Option<String>, bool)> = migrated
            .into_iter()
            .map(|(name, original)| {
                let set = record.fields.contains_key(&name);
                (name, original, set)
            })
            .collect();
        let (value, stored) = self.decode(record, verbatim)?;
        let mut state = self.lock();
        state.value = value;
        state.recent = recent;
        state.schema = schema;
        for (
            field,
            Stored {
                raw,
                version,
                writer,
            },
        ) in state.fields.iter_mut().zip(stored)
        {
            field.writer = writer;
            field.stored = raw;
            field.stored_version = version;
        }
        for (name, original, set) in migrated {
            let Some(index) = S::FIELDS.iter().position(|spec| spec.name == name) else {
                continue;
            };
            // What the store holds is the old value: the migrated one differs, and is written.
            state.fields[index].stored = original;
            state.bump(index, if set { Dirty::Set } else { Dirty::Remove });
        }
        Ok(())
    }

    /// A stored record as a value, with what the store holds of each field (its encoding in
    /// this crate's codec, unless the store returns the text it was given) and its version.
    #[allow(clippy::type_complexity)]
    fn decode(
        &self,
        mut record: Record,
        verbatim: bool,
    ) -> Result<(S, Vec<Stored>), Box<SessionError>> {
        let mut value = S::default();
        let mut stored = Vec::with_capacity(S::FIELDS.len());
        for (index, spec) in S::FIELDS.iter().enumerate() {
            let version = record.version(spec.name);
            let writer = record.writers.get(spec.name).copied();
            let Some(raw) = record.remove(spec.name) else {
                stored.push(Stored {
                    raw: None,
                    version,
                    writer,
                });
                continue;
            };
            if let Err(source) = value.decode_field(index, &raw) {
                if !spec.reset_on_error {
                    return Err(Box::new(SessionError::Decode {
                        session: S::NAME,
                        key: self.session_key(),
                        field: spec.name,
                        source,
                    }));
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
                stored.push(Stored {
                    raw: Some(raw),
                    version,
                    writer,
                });
                continue;
            }
            // What the store holds, in this crate's encoding, so "unchanged" compares equal.
            let raw = if verbatim {
                Some(raw)
            } else {
                value.encode_field(index).ok()
            };
            stored.push(Stored {
                raw,
                version,
                writer,
            });
        }
        Ok((value, stored))
    }

    /// After a conflict: reads the record again and takes the store's value of every field
    /// that is not dirty, and of every field in `conflicts` (whose local writes are discarded:
    /// they were based on an older value). Dirty fields not in conflict keep their value, to be
    /// written by the next save.
    /// `sure`: the store holds none of the discarded writes.
    async fn refresh(&self, store: &dyn Store, conflicts: &[&'static str], sure: bool) {
        let loaded = self.read(store).await;
        self.merge(loaded, store.returns_written_text(), conflicts, sure);
    }

    /// Takes what the store holds (`loaded`) for every field that is not dirty, and for every
    /// field in `conflicts`, whose local writes are discarded.
    fn merge(
        &self,
        loaded: Result<Option<Record>, StoreError>,
        verbatim: bool,
        conflicts: &[&'static str],
        sure: bool,
    ) {
        let recent = match &loaded {
            Ok(record) => record.as_ref().map(Window::of),
            Err(_) => None,
        };
        let schema = match &loaded {
            Ok(record) => record.as_ref().map(Mark::of::<S>),
            Err(_) => None,
        };
        let loaded = match loaded {
            Ok(record) => record.map_or_else(
                || {
                    let none = || Stored {
                        raw: None,
                        version: 0,
                        writer: None,
                    };
                    Ok((S::default(), S::FIELDS.iter().map(|_| none()).collect()))
                },
                |record| self.decode(record, verbatim),
            ),
            Err(source) => Err(Box::new(SessionError::Load {
                session: S::NAME,
                key: self.session_key(),
                source: Box::new(source),
            })),
        };
        let mut state = self.lock();
        let stored = match loaded {
            Ok((_, stored)) => {
                state.recent = recent.unwrap_or_default();
                state.schema = schema.unwrap_or_default();
                stored
            }
            Err(error) => {
                // The conflicting writes are dropped all the same; what the store holds for
                // them stays unknown, so their next write conflicts and refreshes again.
                tracing::warn!(session = S::NAME, key = &*self.key, %error, "cannot refresh a session after a conflict");
                for (index, spec) in S::FIELDS.iter().enumerate() {
                    if conflicts.contains(&spec.name) {
                        let field = &mut state.fields[index];
                        field.discard(sure);
                        field.dirty = Dirty::Clean;
                    }
                }
                return;
            }
        };
        let state = &mut *state;
        for (
            index,
            (
                spec,
                Stored {
                    raw,
                    version,
                    writer,
                },
            ),
        ) in S::FIELDS.iter().zip(stored).enumerate()
        {
            let field = &mut state.fields[index];
            let conflicting = conflicts.contains(&spec.name);
            if field.dirty != Dirty::Clean && !conflicting {
                continue;
            }
            if field.dirty != Dirty::Clean {
                field.discard(sure);
            }
            let changed = conflicting || field.stored_version != version;
            field.stored = raw;
            field.stored_version = version;
            field.writer = writer;
            field.dirty = Dirty::Clean;
            if changed {
                // A new local version: a `set_*` based on a read before this is stale.
                state.restore_stored(index);
            }
        }
    }

    /// Takes the store lease of this key for `term` (exclusive mode across processes): reads
    /// the record until no other process holds an unexpired lease (until `deadline`, then
    /// [`SessionError::Busy`]), claims it with a write conditional on the lease's version, and
    /// takes the record as read into the live state. Whoever saved last released the lease in
    /// the patch that saved its writes, so the record read holds them.
    pub(crate) async fn take_lease(
        &self,
        store: &dyn Store,
        terms: &Terms,
        expiry: Option<Duration>,
        (started, deadline): (Instant, Instant),
        stats: &Stats,
    ) -> Result<Lease, SessionError> {
        let load_error = |source| SessionError::Load {
            session: S::NAME,
            key: self.session_key(),
            source: Box::new(source),
        };
        // Across processes the lease, not the revision, says who may use the record.
        self.unseen();
        let mut pause = Duration::from_millis(1);
        // Whether another process was seen holding the lease: the update is waiting then, and
        // a poll that fails is tried again until the deadline rather than failing the update
        // (a kept lease can make the wait long). A first read that fails fails at once, as
        // any load does.
        let mut waiting = false;
        loop {
            stats.add(Count::Loads, 1);
            let record = match store.load(&self.key).await {
                Ok(record) => record,
                Err(source) => {
                    let now = Instant::now();
                    if !waiting || now >= deadline {
                        return Err(load_error(source));
                    }
                    tracing::debug!(
                        session = S::NAME,
                        key = &*self.key,
                        error = %source,
                        "a read while waiting for the lease failed; reading again"
                    );
                    back_off(&mut pause, deadline - now).await;
                    continue;
                }
            };
            let observed = lease::observe(record.as_ref(), &terms.holder);
            if let Some(held_for) = observed.held_for {
                waiting = true;
                let now = Instant::now();
                if now >= deadline {
                    return Err(SessionError::Busy {
                        session: S::NAME,
                        key: self.session_key(),
                        waited: now - started,
                    });
                }
                back_off(&mut pause, held_for.min(deadline - now)).await;
                continue;
            }
            let claimed = Instant::now();
            let claim = Lease::claim(&terms.holder, observed.version, terms.term, expiry);
            match store.apply(&self.key, &claim).await {
                Ok(()) => {}
                // Another process claimed it first: wait for it like for any holder.
                Err(error) if lease::lost(&error) => continue,
                Err(source) => return Err(load_error(source)),
            }
            if observed.expired {
                stats.add(Count::LeaseTakeovers, 1);
                tracing::info!(
                    session = S::NAME,
                    key = &*self.key,
                    "took over a lease its holder let expire"
                );
            }
            let lease = Lease {
                version: observed.version + 1,
                deadline: claimed.later(terms.term),
                ttl: terms.term,
                linger: terms.linger,
                since: claimed,
                holder: Arc::clone(&terms.holder),
            };
            let verbatim = store.returns_written_text();
            match record {
                Some(record) if !self.loaded.initialized() => {
                    self.fill(record, verbatim).map_err(|error| *error)?;
                }
                record => self.merge(Ok(record), verbatim, &[], true),
            }
            let _ = self.loaded.set(());
            return Ok(lease);
        }
    }

    /// Keeps `lease` for the next update of the key in this process.
    pub(crate) fn keep_lease(&self, lease: Lease) {
        *self.kept.lock() = Some(Box::new(lease));
    }

    /// The lease the last update of the key left, if enough of it is left to use.
    pub(crate) fn kept_lease(&self) -> Option<Lease> {
        self.kept
            .lock()
            .take()
            .filter(|lease| lease.is_reusable())
            .map(|lease| *lease)
    }

    /// Whether the entry keeps a live lease: it is then kept decoded between updates.
    pub(crate) fn keeps_lease(&self) -> bool {
        self.kept
            .lock()
            .as_ref()
            .is_some_and(|lease| lease.is_live())
    }

    /// Deletes the stored record and makes the live state forget it (ARCHITECTURE.md,
    /// "Erasure"): every field back to its default with nothing stored, the writes not yet
    /// saved discarded (the updates that made them learn it, as after a conflict). It waits
    /// for a load or a save of the key under way, so neither can bring the old values back
    /// after it.
    pub(crate) async fn erase(&self, store: &dyn Store, stats: &Stats) -> Result<(), StoreError> {
        // An entry nobody loaded holds nothing of the record: take it as loaded empty rather
        // than read what is about to be deleted. One whose load is under way waits for it.
        if self.loaded.set(()).is_err() {
            let _ = self.ensure_loaded(store, stats).await;
        }
        let _in_order = self.write_gate.lock().await;
        self.unseen();
        // The lease goes with the record.
        self.kept.lock().take();
        store.delete(&self.key).await?;
        stats.add(Count::Deletes, 1);
        let every_field: Vec<&'static str> = S::FIELDS.iter().map(|spec| spec.name).collect();
        self.merge(Ok(None), true, &every_field, true);
        self.lock().delete_pending = false;
        Ok(())
    }

    /// Renews the record's expiry after a use that wrote nothing (under
    /// [`Renewal::OnAccess`](crate::Renewal::OnAccess)). A renewal that fails costs the update
    /// nothing but a warning: the session is saved as it was, and the next read tries again.
    async fn renew(&self, store: &dyn Store, expiry: &Expiry, stats: &Stats) {
        let renewal = Patch::new().with_ttl(expiry.ttl);
        match self.write(store, &renewal).await {
            Ok(()) => {
                stats.add(Count::Renewals, 1);
            }
            Err(error) => {
                expiry.failed(&self.key);
                tracing::warn!(
                    session = S::NAME,
                    key = &*self.key,
                    %error,
                    "could not renew the session's expiry after a read; the next read tries again"
                );
            }
        }
    }
}
