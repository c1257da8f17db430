//! One live session: its value, the per-field bookkeeping, and its codec both ways, decode
//! when the stored record is loaded, and encode, diff and reconcile when a patch is written
//! (ARCHITECTURE.md, "Dirty tracking" and "Save after the chain").

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::clock::Later;
use crate::error::{SessionError, SessionKey, StoreError, StoreOp};
use crate::live::expiry::Expiry;
use crate::live::lease::{self, Lease};
use crate::live::migrate::{self, Mark};
use crate::live::state::{Dirty, FieldState, State};
use crate::live::window::{Signature, Signer, Window};
use crate::schema::Schema;
use crate::stats::{Count, Latency, Stats};
use crate::store::{Patch, Record, Revision, Store};
use std::sync::Arc;

/// How many times a patch whose call met its deadline is sent again before its updates are
/// told it failed (see [`Entry::send`]); a second deadline ends the resends, so a store that
/// does not answer costs an update at most two deadlines.
const RESENDS: usize = 3;

/// How a save attempt ended, for the updates that waited for it.
struct Attempt {
    number: u64,
    /// `None`: saved. Otherwise the store's error (its backend, and as text: the error itself
    /// went to the update that made the attempt).
    failure: Option<(&'static str, String)>,
}

/// What a patch carries that tells whether it landed: the updates whose writes it carries,
/// and its signature.
struct Carried<'a> {
    ids: &'a [i64],
    signature: Option<Signature>,
}

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
            seen: Mutex::new(Revision::Unknown),
            signer,
        }
    }

    /// The key as the key strategy made it, for errors.
    pub(crate) fn session_key(&self) -> SessionKey {
        SessionKey::of_stored(&self.key, S::NAMESPACE)
    }

    /// Whether the entry holds the stored record (a load or a lease claim read it).
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.initialized()
    }

    /// The revision of the record this entry holds as stored, if it is known.
    pub(crate) fn seen(&self) -> Revision {
        *self.seen.lock()
    }

    /// Runs `read`, a read of the whole record, and records the revision it read when it
    /// succeeded and the store's revision was the same before and after it (nothing was
    /// written in between).
    async fn bracketed(
        &self,
        store: &dyn Store,
        read: impl Future<Output = Result<Option<Record>, StoreError>>,
    ) -> Result<Option<Record>, StoreError> {
        let before = store.revision(&self.key);
        let read = read.await;
        let after = store.revision(&self.key);
        *self.seen.lock() = if read.is_ok() && before == after {
            after
        } else {
            Revision::Unknown
        };
        read
    }

    /// The error of the last save of this entry that failed, for the updates whose writes it
    /// carried (and took back) while they were still running.
    pub(crate) fn failed_save(&self) -> StoreError {
        let failure = self
            .last_attempt
            .lock()
            .as_ref()
            .and_then(|attempt| attempt.failure.clone());
        let (backend, message) =
            failure.unwrap_or(("store", String::from("the store did not confirm it")));
        StoreError::backend(
            backend,
            StoreOp::Apply,
            &*self.key,
            format!(
                "a save that carried this update's writes failed ({message}); they were taken \
                 back, and the store may hold them: deliver the update again"
            ),
        )
    }

    /// Forgets the revision: what the entry holds as stored may differ from the store.
    fn unseen(&self) {
        *self.seen.lock() = Revision::Unknown;
    }

    /// Applies a patch of this entry's (behind its write gate). Once it is written, the entry
    /// holds as stored the record at the store's new revision if that revision is what this
    /// one apply made of the one the entry had seen (no other write came in between).
    async fn write(&self, store: &dyn Store, patch: &Patch<'_>) -> Result<(), StoreError> {
        let applied = store.apply(&self.key, patch).await;
        // One apply past the revision seen is this one: no other write came in between, so
        // the revision before the apply needs no reading of its own. A refused patch is
        // followed by a refresh, which reads the revision again.
        let after = match applied {
            Ok(()) => store.revision(&self.key),
            Err(_) => Revision::Unknown,
        };
        let mut seen = self.seen.lock();
        *seen = if after.follows(*seen) {
            after
        } else {
            Revision::Unknown
        };
        applied
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
        self.loaded
            .get_or_try_init(|| {
                stats.add(Count::Loads, 1);
                self.load(store, stats)
            })
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
        let loaded = self
            .bracketed(store, store.load(&self.key).instrument(span.clone()))
            .await;
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

    /// Sends a patch of this entry's (behind its write gate) until the store answers whether
    /// it applied it. A call that met its deadline does not say: the store may have applied
    /// the patch after the caller stopped waiting. So the record is read at once: it shows
    /// the patch if it names every update the patch carried (`ids`, in its window or as a
    /// field's writer). If it does not,
    /// the same patch is sent again, at most [`RESENDS`] times: both sends expect the same
    /// versions, so at most one applies, and a resend refused with a conflict is looked up
    /// again. Returns the outcome, and whether a refusal may hide an applied send (nothing the
    /// record showed could tell: the updates are then told their save failed, and their
    /// redelivery is recognised by its id if it had landed).
    async fn send(
        &self,
        store: &dyn Store,
        patch: &Patch<'_>,
        carried: &Carried<'_>,
    ) -> (Result<(), StoreError>, bool) {
        let applied = self.write(store, patch).await;
        match &applied {
            // Rare: boxed, so the future of every persist stays small.
            Err(error) if error.is_deadline() => {
                Box::pin(self.resolve(store, patch, carried, applied)).await
            }
            _ => (applied, false),
        }
    }

    /// After a send met its deadline: looks up and resends (see [`send`](Self::send)).
    async fn resolve(
        &self,
        store: &dyn Store,
        patch: &Patch<'_>,
        carried: &Carried<'_>,
        mut applied: Result<(), StoreError>,
    ) -> (Result<(), StoreError>, bool) {
        let (mut resent, mut deadlines) = (0, 0);
        // After a deadline, find out and resend until the store answers; a second deadline
        // ends it (a store that does not answer costs at most two), a fast failure is tried
        // again, a few times.
        while resent < RESENDS
            && let Err(error @ StoreError::Backend { .. }) = &applied
            && (error.is_deadline() || deadlines > 0)
        {
            if error.is_deadline() {
                deadlines += 1;
                if deadlines > 1 {
                    break;
                }
            }
            if self.landed(store, carried).await == Some(true) {
                return self.confirm(store).await;
            }
            resent += 1;
            applied = self.write(store, patch).await;
        }
        if resent == 0 || !matches!(applied, Err(StoreError::Conflict { .. })) {
            return (applied, false);
        }
        // Refused: the first send landed after the look, or another writer came in between.
        // The refusal carries the record as the store read it then, before later writers
        // could push this patch's ids out of the window.
        if let Err(StoreError::Conflict {
            current: Some(record),
            ..
        }) = &applied
            && self.shows(record, carried)
        {
            return self.confirm(store).await;
        }
        for _ in 0..=RESENDS {
            match self.landed(store, carried).await {
                Some(true) => return self.confirm(store).await,
                Some(false) => break,
                None => {}
            }
        }
        (applied, true)
    }

    /// After a read showed this entry's writes saved: where a read does not prove them as
    /// safe as an acknowledged write ([`Store::reads_are_durable`]), writes a mark to the
    /// record, whose success does (a store that acknowledges a write once replicas have it
    /// replicates a record's writes in order). Returns the outcome as [`send`](Self::send)
    /// does: a failed mark leaves it unknown whether the writes are safe.
    pub(crate) async fn confirm(&self, store: &dyn Store) -> (Result<(), StoreError>, bool) {
        if store.reads_are_durable() {
            return (Ok(()), false);
        }
        let mut patch = Patch::new();
        self.signer.mark(&mut patch);
        match self.write(store, &patch).await {
            Ok(()) => (Ok(()), false),
            Err(error) => {
                tracing::warn!(
                    session = S::NAME,
                    key = &*self.key,
                    %error,
                    "the store holds these writes, but could not show them replicated"
                );
                (Err(error), true)
            }
        }
    }

    /// Whether the record shows the patch that carried `ids` applied (see
    /// [`send`](Self::send)); `None` when it cannot be read.
    async fn landed(&self, store: &dyn Store, carried: &Carried<'_>) -> Option<bool> {
        let record = store.load(&self.key).await.ok()?;
        let Some(record) = record else {
            return Some(false);
        };
        Some(self.shows(&record, carried))
    }

    /// Whether `record` shows the patch that carried `ids` applied: it holds the patch's
    /// signature, or names every one of them, in its window or as a field's writer.
    fn shows(&self, record: &Record, carried: &Carried<'_>) -> bool {
        if carried
            .signature
            .is_some_and(|signature| signature.shown_by(record))
        {
            self.unseen();
            return true;
        }
        let ids = carried.ids;
        let window = Window::of(record);
        let named = |id: &i64| {
            window.contains(*id)
                || S::FIELDS
                    .iter()
                    .any(|spec| record.writers.get(spec.name) == Some(id))
        };
        // Every update the patch carries, not one: an update can also be named by an earlier
        // patch of its own (a delivery whose save timed out and landed), which proves nothing
        // of the others this one carries.
        let landed = !ids.is_empty() && ids.iter().all(named);
        if landed {
            tracing::info!(
                session = S::NAME,
                key = &*self.key,
                "a save that met its deadline had been applied"
            );
            self.unseen();
        }
        landed
    }

    /// After a conflict: reads the record again and takes the store's value of every field
    /// that is not dirty, and of every field in `conflicts` (whose local writes are discarded:
    /// they were based on an older value). Dirty fields not in conflict keep their value, to be
    /// written by the next save.
    /// `sure`: the store holds none of the discarded writes.
    async fn refresh(&self, store: &dyn Store, conflicts: &[&'static str], sure: bool) {
        let loaded = self.bracketed(store, store.load(&self.key)).await;
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
        (holder, term): (&Arc<str>, Duration),
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
        loop {
            stats.add(Count::Loads, 1);
            let record = store.load(&self.key).await.map_err(load_error)?;
            let observed = lease::observe(record.as_ref(), holder);
            if let Some(held_for) = observed.held_for {
                let now = Instant::now();
                if now >= deadline {
                    return Err(SessionError::Busy {
                        session: S::NAME,
                        key: self.session_key(),
                        waited: now - started,
                    });
                }
                // Poll with a growing pause, never past the lease's end or the deadline.
                tokio::time::sleep(pause.min(held_for).min(deadline - now)).await;
                pause = (pause * 2).min(Duration::from_millis(25));
                continue;
            }
            let claimed = Instant::now();
            let claim = Lease::claim(holder, observed.version, term, expiry);
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
                deadline: claimed.later(term),
                ttl: term,
                holder: Arc::clone(holder),
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

    /// The first step of a save after `clear()`: deletes the record, and forgets what it held.
    /// Under a lease, the lease went with the record, and the patch that follows claims the key
    /// afresh.
    async fn delete_cleared(
        &self,
        store: &dyn Store,
        stats: &Stats,
        lease: Option<&mut Lease>,
    ) -> Result<(), StoreError> {
        self.unseen();
        store.delete(&self.key).await?;
        stats.add(Count::Deletes, 1);
        let mut state = self.lock();
        for field in state.fields.iter_mut() {
            field.stored = None;
            field.stored_version = 0;
            field.writer = None;
        }
        state.recent = Window::default();
        state.schema = Mark::default();
        // Every clear() so far is satisfied, also one made while the delete was in flight:
        // the record is gone, and the write gate lets no write of this entry reach the store
        // between the delete and the patch that follows. What was written after such a clear
        // is dirty and goes into that patch; deleting again later would lose it.
        state.delete_pending = false;
        if let Some(lease) = lease {
            lease.version = 0;
        }
        Ok(())
    }

    /// Builds the patch of what changed into `patch`: the dirty fields that differ from the
    /// store, what they and the fields read expect, the schema version where the record needs
    /// it, the ids of the updates it carries, and its signature. Returns those ids, whether it
    /// stamped the version, and the signature.
    fn stage_patch(
        &self,
        patch: &mut Patch<'_>,
    ) -> Result<(Vec<i64>, bool, Option<Signature>), SessionError> {
        let mut state = self.lock();
        let mut ids = std::mem::take(&mut state.ids);
        ids.clear();
        state
            .diff(patch, &mut ids)
            .map_err(|(field, source)| SessionError::Encode {
                session: S::NAME,
                key: self.session_key(),
                field,
                source,
            })?;
        let stamped = state.stamp_version(patch);
        state.recent.add_to(&ids, patch);
        let signature = self.signer.sign(&state.recent, patch);
        Ok((ids, stamped, signature))
    }

    /// After the store refused `patch` because `fields` (stored names) changed: takes back the
    /// writes that may rest on them (only theirs, or every unsaved write when a field the
    /// patch only read changed), takes the record the store read with the refusal (`current`;
    /// loads it when there is none) as the session's state, and returns the conflict for the
    /// update. `sure`: the store certainly holds none of the patch.
    async fn conflicted(
        &self,
        store: &dyn Store,
        patch: &Patch<'_>,
        fields: &[String],
        current: Option<Box<Record>>,
        sure: bool,
    ) -> SessionError {
        let fields: Vec<&'static str> = S::FIELDS
            .iter()
            .map(|spec| spec.name)
            .filter(|name| fields.iter().any(|f| f == name))
            .collect();
        // A field the patch only read changed: every unsaved write may rest on the value
        // read, so all of them are taken back, and their updates run again.
        let read_changed = fields
            .iter()
            .any(|name| !patch.written_fields().any(|written| written == *name));
        let taken_back: Vec<&'static str> = {
            let mut state = self.lock();
            state.forget_in_flight();
            if read_changed {
                let mut all = fields.clone();
                all.extend(state.dirty_fields().filter(|name| !fields.contains(name)));
                all
            } else {
                fields.clone()
            }
        };
        tracing::warn!(
            session = S::NAME,
            key = &*self.key,
            ?fields,
            "write conflict: another writer changed these fields; refreshing the session"
        );
        match current {
            // The store read the record when it refused the patch: no load needed.
            Some(record) => {
                self.unseen();
                let verbatim = store.returns_written_text();
                self.merge(Ok(Some(*record)), verbatim, &taken_back, sure);
            }
            None => self.refresh(store, &taken_back, sure).await,
        }
        SessionError::Conflict {
            session: S::NAME,
            key: self.session_key(),
            fields,
        }
    }

    /// Writes the dirty fields, whoever changed them, as one patch; a pending `clear()` first
    /// deletes the record. A field written again while the patch is in flight stays dirty.
    ///
    /// Under a `lease`, nothing is written once it has run out, the patch releases it, and
    /// the store refuses the patch whole if another process has taken it over
    /// ([`SessionError::LeaseLost`]).
    ///
    /// When the store fails the patch, its writes are taken back (`take_back`, for updates
    /// that are delivered again: ARCHITECTURE.md, "Exactly once") or stay dirty for a later
    /// save.
    pub(crate) async fn persist(
        &self,
        store: &dyn Store,
        expiry: &Expiry,
        stats: &Stats,
        mut lease: Option<&mut Lease>,
        take_back: bool,
    ) -> Result<(), SessionError> {
        let persist_error = |source| SessionError::Save {
            session: S::NAME,
            key: self.session_key(),
            source: Box::new(source),
            chain: None,
        };
        let seen = self.attempts.load(Ordering::Acquire);
        let _in_order = self.write_gate.lock().await;
        if let Some(attempt) = self.last_attempt.lock().as_ref()
            && attempt.number > seen
        {
            // It began after this call: its patch held everything written before.
            return match &attempt.failure {
                None => Ok(()),
                Some((backend, message)) => Err(persist_error(StoreError::backend(
                    backend,
                    StoreOp::Apply,
                    &*self.key,
                    format!("the save that carried this update's writes failed: {message}"),
                ))),
            };
        }
        let number = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        *self.last_attempt.lock() = None;
        let ended = |failure: Option<&StoreError>| {
            *self.last_attempt.lock() = Some(Attempt {
                number,
                failure: failure.map(|error| (error.backend_name(), error.to_string())),
            });
        };
        let lease_lost = || {
            stats.add(Count::LeasesLost, 1);
            SessionError::LeaseLost {
                session: S::NAME,
                key: self.session_key(),
            }
        };
        if lease.as_ref().is_some_and(|lease| !lease.is_live()) {
            return Err(lease_lost());
        }

        if self.lock().delete_pending {
            self.delete_cleared(store, stats, lease.as_deref_mut())
                .await
                .map_err(persist_error)?;
        }
        let mut patch = Patch::new().with_ttl(expiry.ttl);
        let (ids, stamped, signature) = self.stage_patch(&mut patch)?;
        if let Some(lease) = &lease {
            lease.release_in(&mut patch);
        }
        if patch.is_empty() {
            ended(None);
            if expiry.reads_renew() && self.lock().is_stored() && expiry.claim_renewal(&self.key) {
                self.renew(store, expiry, stats).await;
            }
            return Ok(());
        }

        let bytes = patch.bytes();
        let span = tracing::debug_span!(
            "session.save",
            session = S::NAME,
            key = &*self.key,
            set = patch.set.len(),
            removed = patch.remove.len(),
            bytes,
            outcome = tracing::field::Empty
        );
        let timer = stats.start();
        let (applied, unsure) = self
            .send(
                store,
                &patch,
                &Carried {
                    ids: &ids,
                    signature,
                },
            )
            .instrument(span.clone())
            .await;
        stats.took(Latency::Save, timer);
        span.record(
            "outcome",
            match &applied {
                Ok(()) => "saved",
                Err(StoreError::Conflict { .. }) => "conflict",
                Err(error) if error.is_deadline() => "deadline",
                Err(_) => "error",
            },
        );
        match applied {
            Ok(()) => {}
            Err(error) if lease.is_some() && lease::lost(&error) => {
                self.lock().forget_in_flight();
                tracing::warn!(
                    session = S::NAME,
                    key = &*self.key,
                    "another process took over the lease on this key: nothing was written"
                );
                return Err(lease_lost());
            }
            Err(StoreError::Conflict {
                fields, current, ..
            }) => {
                stats.add(Count::Conflicts, 1);
                return Err(self
                    .conflicted(store, &patch, &fields, current, !unsure)
                    .await);
            }
            Err(source) => {
                if take_back {
                    self.lock().discard_in_flight();
                } else {
                    self.lock().forget_in_flight();
                }
                ended(Some(&source));
                stats.add(Count::FailedSaves, 1);
                if source.is_deadline() {
                    stats.add(Count::Deadlines, 1);
                }
                return Err(persist_error(source));
            }
        }
        ended(None);
        if patch.ttl.is_some() {
            expiry.written(&self.key);
        }
        stats.add(Count::Writes, 1);
        stats.add(Count::BytesWritten, bytes as u64);
        self.saved(patch, ids, stamped);
        Ok(())
    }

    /// The last step of a save: what `patch` wrote is now what the store holds, and the
    /// fields not written again since are clean.
    fn saved(&self, patch: Patch<'_>, ids: Vec<i64>, stamped: bool) {
        tracing::debug!(
            session = S::NAME,
            key = &*self.key,
            set = patch.set.len(),
            removed = patch.remove.len(),
            "session saved"
        );
        let mut state = self.lock();
        state.recent.written(&patch);
        state.reconcile(patch);
        state.ids = ids;
        if stamped {
            state.schema = Mark {
                version: migrate::version::<S>(),
                counter: state.schema.counter + 1,
            };
        }
    }
}
