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
use crate::live::window::{Signature, Signer, Window};
use crate::schema::Schema;
use crate::schema::VERSION_FIELD;
use crate::stats::{Count, Latency, Stats};
use crate::store::{Patch, Record, Revision, Store};
use std::sync::Arc;

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

/// Per stored field: its version, its dirtiness, and what the store holds for it.
#[derive(Debug)]
pub(crate) struct FieldState {
    /// Bumped on every write; a holder compares it with the version it last saw.
    pub(crate) version: u64,
    dirty: Dirty,
    /// The encoded value the store holds, `None` when it holds nothing for this field.
    stored: Option<String>,
    /// The field's version in the store, as last seen: what the next write expects.
    stored_version: u64,
    /// The update that last wrote the field in the store, if it had an id.
    pub(crate) writer: Option<i64>,
    /// The update that last wrote the field here, if it had an id: the writer the next patch
    /// records.
    pub(crate) wrote_by: Option<i64>,
    /// The newest local version whose fate is known: written to the store, or discarded.
    decided: u64,
    /// The local versions whose writes were discarded (the newest few ranges), so the
    /// updates that made them learn it.
    discarded: Vec<Discard>,
    /// The updates whose writes of this field are not decided yet, by the local version they
    /// made: the patch that carries the field records them all as saved updates.
    pending: Vec<(u64, i64)>,
    /// What the save under way writes of the field (there is at most one per entry,
    /// behind its write gate).
    in_flight: Option<InFlight>,
    /// How many running updates read the field: while any does, every patch expects the
    /// version it read, so no write based on a value another process has since changed is
    /// committed (ARCHITECTURE.md, "Serializable updates").
    pub(crate) readers: u32,
}

/// Local versions `(after, up_to]` of a field whose writes were discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Discard {
    after: u64,
    up_to: u64,
    /// Whether the store certainly holds none of them: the store refused their patch (a
    /// conflict), or they were never sent. Otherwise a save that carried them failed in a
    /// way that leaves the store's state unknown (a timeout may follow an applied write).
    sure: bool,
}

/// What became of a write a field remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// In the store.
    Saved,
    /// Not written yet.
    Pending,
    /// Taken back: the store holds none of it (`sure`), or may hold it (a failed save).
    Discarded { sure: bool },
}

/// A field's write in the patch under way.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The local version written.
    version: u64,
    /// Set, rather than removed.
    set: bool,
    /// The update recorded as its writer, if one is.
    writer: Option<i64>,
}

/// How many discarded ranges a field remembers. Consecutive discards with no save between
/// them make one range when they are alike (both sure, or both not), so an update is told of
/// a discarded write unless, while it ran, one field had this many discards each followed by
/// a save or by one of the other kind.
const DISCARDS_KEPT: usize = 32;

impl FieldState {
    /// A field with nothing in the store and nothing written.
    fn new() -> Self {
        FieldState {
            version: 1,
            dirty: Dirty::Clean,
            stored: None,
            stored_version: 0,
            writer: None,
            wrote_by: None,
            decided: 0,
            discarded: Vec::new(),
            pending: Vec::new(),
            in_flight: None,
            readers: 0,
        }
    }

    /// Drops the writes not yet written, and remembers which local versions they were:
    /// `sure` when the store holds none of them.
    fn discard(&mut self, sure: bool) {
        self.pending.clear();
        if self.version <= self.decided {
            return;
        }
        match self.discarded.last_mut() {
            // Nothing was saved since the last discard, and the store holds as little of
            // these as of those: one range.
            Some(last) if last.up_to == self.decided && last.sure == sure => {
                last.up_to = self.version;
            }
            _ => {
                if self.discarded.len() == DISCARDS_KEPT {
                    self.discarded.remove(0);
                }
                self.discarded.push(Discard {
                    after: self.decided,
                    up_to: self.version,
                    sure,
                });
            }
        }
        self.decided = self.version;
    }

    /// What became of the write that made local version `version`.
    pub(crate) fn fate(&self, version: u64) -> Fate {
        if let Some(discard) = self
            .discarded
            .iter()
            .find(|d| d.after < version && version <= d.up_to)
        {
            return Fate::Discarded { sure: discard.sure };
        }
        if version <= self.decided {
            Fate::Saved
        } else {
            Fate::Pending
        }
    }

    /// Whether the write that made local version `version` is in the store.
    pub(crate) fn is_saved(&self, version: u64) -> bool {
        self.fate(version) == Fate::Saved
    }

    /// The store already holds what the field has: nothing to write, and every write of it
    /// so far is as good as saved.
    fn settled(&mut self) {
        self.dirty = Dirty::Clean;
        self.decided = self.decided.max(self.version);
        self.pending.clear();
    }

    /// Records that update `id` made local version `version` of this field.
    pub(crate) fn written_by(&mut self, version: u64, id: i64) {
        self.wrote_by = Some(id);
        self.pending.push((version, id));
    }

    /// Forgets that update `id` wrote this field: its write was taken back.
    pub(crate) fn unwritten_by(&mut self, id: i64) {
        self.pending.retain(|&(_, by)| by != id);
    }
}

/// The live value of one key and its bookkeeping.
pub(crate) struct State<S> {
    pub(crate) value: S,
    pub(crate) fields: Box<[FieldState]>,
    clock: u64,
    /// `clear()` was called and the record is still to be deleted.
    pub(crate) delete_pending: bool,
    /// Counts `clear()` calls, so the error policy takes back only this update's own clear.
    pub(crate) clear_epoch: u64,
    /// The ids of the latest updates whose writes the store holds: how a redelivery is
    /// recognised after another update wrote the same fields.
    pub(crate) recent: Window,
    /// The schema version the stored record carries (see `live/migrate`).
    schema: Mark,
    /// The ids of the updates a patch carries, kept between saves to spare an allocation.
    ids: Vec<i64>,
}

impl<S: Schema> State<S> {
    /// Whether anything here still has to reach the store.
    pub(crate) fn has_changes(&self) -> bool {
        self.delete_pending || self.fields.iter().any(|f| f.dirty != Dirty::Clean)
    }

    /// Whether the store held the record when it was last read or written (a field of it
    /// has a stored value or a version), so that renewing its expiry has something to renew.
    pub(crate) fn is_stored(&self) -> bool {
        self.fields
            .iter()
            .any(|f| f.stored.is_some() || f.stored_version > 0)
    }

    /// Adds the type's schema version to a patch that writes a record not known to carry it
    /// (a new one, or one just migrated), so that the record is never migrated again; returns
    /// whether it did. Types without migrations write no version.
    fn stamp_version(&self, patch: &mut Patch<'_>) -> bool {
        let version = migrate::version::<S>();
        if version == 0 || self.schema.version == version || (patch.is_empty() && !self.is_stored())
        {
            return false;
        }
        patch.set.push((VERSION_FIELD, version.to_string()));
        patch.expect.push((VERSION_FIELD, self.schema.counter));
        true
    }

    /// Records a write of field `index` and returns its new version.
    pub(crate) fn bump(&mut self, index: usize, dirty: Dirty) -> u64 {
        self.clock += 1;
        let field = &mut self.fields[index];
        field.version = self.clock;
        field.dirty = dirty;
        self.clock
    }

    /// The encoding of field `index` as it is now, to restore it later; `None` if it cannot
    /// be encoded.
    pub(crate) fn save_field(&self, index: usize) -> Option<String> {
        self.value.encode_field(index).ok()
    }

    /// Puts back a field saved with [`save_field`](Self::save_field) and marks it, so the next
    /// save writes it if the store holds something else. Returns whether it was restored.
    pub(crate) fn restore_field(&mut self, index: usize, saved: &str) -> bool {
        if self.value.decode_field(index, saved).is_err() {
            return false;
        }
        self.bump(index, Dirty::Set);
        true
    }

    /// Marks clean the fields marked for writing whose value is what the store holds (after
    /// taking back writes that were never saved).
    pub(crate) fn settle(&mut self) {
        let mut defaults: Option<S> = None;
        for index in 0..self.fields.len() {
            if self.fields[index].dirty != Dirty::Set {
                continue;
            }
            let same = self
                .value
                .encode_field(index)
                .is_ok_and(|encoded| self.holds(index, &encoded, &mut defaults));
            if same {
                self.fields[index].settled();
            }
        }
    }

    /// Whether the store holds `encoded` for field `index`. Nothing stored reads back as the
    /// default, built at most once per caller in `defaults`.
    fn holds(&self, index: usize, encoded: &str, defaults: &mut Option<S>) -> bool {
        match &self.fields[index].stored {
            Some(stored) => same_json(stored, encoded),
            None => defaults
                .get_or_insert_with(S::default)
                .encode_field(index)
                .is_ok_and(|d| same_json(&d, encoded)),
        }
    }

    /// Sets field `index` from an encoding (one taken with [`save_field`](Self::save_field),
    /// or the store's), or to its default when there is none or it does not decode (as a load
    /// does for a `reset_on_error` field). No new version, no mark.
    pub(crate) fn set_from(&mut self, index: usize, text: Option<&str>) {
        let decoded = text.is_some_and(|text| self.value.decode_field(index, text).is_ok());
        if !decoded {
            self.value.reset_field(index);
        }
    }

    /// Whether field `index` has a change the store does not hold yet.
    pub(crate) fn is_dirty(&self, index: usize) -> bool {
        self.fields[index].dirty != Dirty::Clean
    }

    /// Puts back into field `index` what the store holds for it (its default if nothing), as
    /// a new local version that needs no write.
    pub(crate) fn restore_stored(&mut self, index: usize) {
        let stored = self.fields[index].stored.take();
        self.set_from(index, stored.as_deref());
        self.fields[index].stored = stored;
        self.bump(index, Dirty::Clean);
    }

    /// Forgets what a save that did not complete was writing: those fields stay dirty.
    fn forget_in_flight(&mut self) {
        for field in self.fields.iter_mut() {
            field.in_flight = None;
        }
    }

    /// After a save that failed: takes back every write it carried, and every later write of
    /// those fields (built on them), back to what the store held before it. The store may
    /// hold them after all (a timeout can follow an applied write), so the discard is not
    /// sure: the updates that made them run again, and are recognised if it was applied.
    fn discard_in_flight(&mut self) {
        for index in 0..self.fields.len() {
            if self.fields[index].in_flight.take().is_some() {
                self.fields[index].discard(false);
                self.restore_stored(index);
            }
        }
    }

    /// Encodes the dirty fields, drops those whose encoding equals what the store holds, and
    /// adds the rest to `patch`, marking them in flight. A field that cannot be encoded is
    /// returned by name, with nothing marked in flight.
    fn diff(
        &mut self,
        patch: &mut Patch<'_>,
        ids: &mut Vec<i64>,
    ) -> Result<(), (&'static str, serde_json::Error)> {
        let mut defaults: Option<S> = None;
        for (index, spec) in S::FIELDS.iter().enumerate() {
            let field = &self.fields[index];
            let version = field.version;
            match field.dirty {
                Dirty::Clean => {}
                Dirty::Set => {
                    let encoded = match self.value.encode_field(index) {
                        Ok(encoded) => encoded,
                        Err(source) => {
                            self.forget_in_flight();
                            return Err((spec.name, source));
                        }
                    };
                    if self.holds(index, &encoded, &mut defaults) {
                        self.fields[index].settled();
                    } else {
                        patch.set.push((spec.name, encoded));
                        self.stage(index, version, true, patch, ids);
                    }
                }
                Dirty::Remove => {
                    if self.fields[index].stored.is_none() {
                        self.fields[index].settled();
                    } else {
                        patch.remove.push(spec.name);
                        self.stage(index, version, false, patch, ids);
                    }
                }
            }
        }
        if !patch.is_empty() {
            self.expect_reads(patch);
        }
        Ok(())
    }

    /// Makes `patch` expect the stored version of every field a running update read and the
    /// patch does not write: the writes it carries may rest on those reads, so it must not
    /// apply if another process changed them since.
    fn expect_reads(&self, patch: &mut Patch<'_>) {
        for (spec, field) in S::FIELDS.iter().zip(self.fields.iter()) {
            if field.readers > 0 && field.in_flight.is_none() {
                patch.expect.push((spec.name, field.stored_version));
            }
        }
    }

    /// The names of the fields with writes not yet in the store.
    fn dirty_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        S::FIELDS
            .iter()
            .zip(self.fields.iter())
            .filter(|(_, field)| field.dirty != Dirty::Clean)
            .map(|(spec, _)| spec.name)
    }

    /// Puts into `patch` what writing field `index` (local `version`; set, else removed)
    /// expects of the store and which update wrote it last, adds every update whose write of
    /// it the patch carries to `ids`, and marks it in flight.
    fn stage(
        &mut self,
        index: usize,
        version: u64,
        set: bool,
        patch: &mut Patch<'_>,
        ids: &mut Vec<i64>,
    ) {
        let (name, field) = (S::FIELDS[index].name, &mut self.fields[index]);
        patch.expect.push((name, field.stored_version));
        if let Some(id) = field.wrote_by {
            patch.writers.push((name, id));
        }
        for &(_, id) in &field.pending {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        field.in_flight = Some(InFlight {
            version,
            set,
            writer: field.wrote_by,
        });
    }

    /// After a patch was written: what it set is now what the store holds, and the fields not
    /// written again since it was built are clean.
    fn reconcile(&mut self, patch: Patch<'_>) {
        // Fields were pushed in index order, so the set values come back in the same order.
        let mut values = patch.set.into_iter().map(|(_, value)| value);
        for field in self.fields.iter_mut() {
            let Some(written) = field.in_flight.take() else {
                continue;
            };
            field.writer = written.writer.or(field.writer);
            field.stored = if written.set { values.next() } else { None };
            field.stored_version += 1;
            field.decided = field.decided.max(written.version);
            field
                .pending
                .retain(|&(version, _)| version > written.version);
            if field.version == written.version {
                field.dirty = Dirty::Clean;
            }
        }
    }
}

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

/// Whether two encodings hold the same value. Equal text is the fast path; otherwise they are
/// compared as JSON values, so a map whose entries serialise in another order (a `HashMap`)
/// is still unchanged.
fn same_json(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    // Only an object's entries can come in another order; text without one that differs
    // holds another value (this crate's encoder writes every other value one way).
    if !a.contains('{') || !b.contains('{') {
        return false;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
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

    /// Whether the entry holds the stored record (a load or a lease claim read it).
    /// The key as the key strategy made it, for errors.
    pub(crate) fn session_key(&self) -> SessionKey {
        SessionKey::of_stored(&self.key, S::NAMESPACE)
    }

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

        let delete_pending = self.lock().delete_pending;
        if delete_pending {
            self.unseen();
            store.delete(&self.key).await.map_err(persist_error)?;
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
            // between the delete and this point. What was written after such a clear is dirty
            // and goes into the patch below; deleting again later would lose it.
            state.delete_pending = false;
            if let Some(lease) = lease.as_mut() {
                // The lease went with the record: the patch below claims the key afresh.
                lease.version = 0;
            }
        }

        let mut patch = Patch::new().with_ttl(expiry.ttl);
        let (ids, stamped, signature) = {
            let mut state = self.lock();
            let mut ids = std::mem::take(&mut state.ids);
            ids.clear();
            state
                .diff(&mut patch, &mut ids)
                .map_err(|(field, source)| SessionError::Encode {
                    session: S::NAME,
                    key: self.session_key(),
                    field,
                    source,
                })?;
            let stamped = state.stamp_version(&mut patch);
            state.recent.add_to(&ids, &mut patch);
            let signature = self.signer.sign(&state.recent, &mut patch);
            (ids, stamped, signature)
        };
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
                let fields: Vec<&'static str> = S::FIELDS
                    .iter()
                    .map(|spec| spec.name)
                    .filter(|name| fields.iter().any(|f| f == name))
                    .collect();
                // A field the patch only read changed: every unsaved write may rest on the
                // value read, so all of them are taken back, and their updates run again.
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
                stats.add(Count::Conflicts, 1);
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
                        self.merge(Ok(Some(*record)), verbatim, &taken_back, !unsure);
                    }
                    None => self.refresh(store, &taken_back, !unsure).await,
                }
                return Err(SessionError::Conflict {
                    session: S::NAME,
                    key: self.session_key(),
                    fields,
                });
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
        tracing::debug!(
            session = S::NAME,
            key = &*self.key,
            set = patch.set.len(),
            removed = patch.remove.len(),
            bytes,
            "session persisted"
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Fate, FieldState, same_json};

    fn field() -> FieldState {
        FieldState::new()
    }

    #[test]
    fn a_write_is_saved_once_a_persist_covered_it_and_discarded_once_a_conflict_dropped_it() {
        let mut f = field();
        // Local versions 2 and 3 are written, then a patch carrying version 3 lands.
        f.version = 3;
        f.decided = 3;
        assert!(f.is_saved(2) && f.is_saved(3));
        // Versions 4 and 5 are written, then a conflict drops them.
        f.version = 5;
        assert_eq!(f.fate(4), Fate::Pending);
        f.discard(true);
        assert_eq!(f.fate(4), Fate::Discarded { sure: true });
        assert_eq!(f.fate(5), Fate::Discarded { sure: true });
        assert_eq!(f.fate(3), Fate::Saved);
        // Version 6 is written and saved: the earlier discard does not reach it.
        f.version = 6;
        f.decided = 6;
        assert!(f.is_saved(6));
        assert!(!f.is_saved(5), "a discarded write is never saved");
    }

    #[test]
    fn a_failed_save_leaves_its_writes_unsure_and_consecutive_discards_of_a_kind_join() {
        let mut f = field();
        f.version = 2;
        f.discard(false);
        // Nothing saved in between, and as unsure: one range.
        f.version = 3;
        f.discard(false);
        assert_eq!(f.discarded.len(), 1);
        assert_eq!(f.fate(1), Fate::Discarded { sure: false });
        assert_eq!(f.fate(3), Fate::Discarded { sure: false });
        // A conflict after a failed save: the store holds none of its writes, whatever it
        // holds of the earlier ones.
        f.version = 4;
        f.discard(true);
        assert_eq!(f.discarded.len(), 2);
        assert_eq!(f.fate(3), Fate::Discarded { sure: false });
        assert_eq!(f.fate(4), Fate::Discarded { sure: true });
        // A save in between keeps the next discard apart.
        f.version = 5;
        f.decided = 5;
        f.version = 6;
        f.discard(true);
        assert_eq!(f.discarded.len(), 3);
        assert_eq!(f.fate(6), Fate::Discarded { sure: true });
        assert_eq!(f.fate(5), Fate::Saved);
    }

    #[test]
    fn only_the_newest_discards_are_remembered() {
        let mut f = field();
        for version in (2..=80).step_by(2) {
            // A save, then a write discarded.
            f.decided = version - 1;
            f.version = version;
            f.discard(true);
        }
        assert_eq!(f.discarded.len(), super::DISCARDS_KEPT);
        assert_eq!(f.fate(80), Fate::Discarded { sure: true });
        assert_eq!(f.fate(18), Fate::Discarded { sure: true });
        assert_eq!(f.fate(16), Fate::Saved, "older than the kept ranges");
        f.discard(true);
        assert_eq!(
            f.discarded.len(),
            super::DISCARDS_KEPT,
            "nothing new to discard"
        );
    }

    #[test]
    fn the_updates_a_field_waits_to_write_are_forgotten_once_decided_or_taken_back() {
        let mut f = field();
        f.version = 2;
        f.written_by(2, 10);
        f.version = 3;
        f.written_by(3, 11);
        f.unwritten_by(10);
        assert_eq!(f.pending, [(3, 11)]);
        f.settled();
        assert!(f.pending.is_empty() && f.is_saved(3));
        f.version = 4;
        f.written_by(4, 12);
        f.discard(false);
        assert!(f.pending.is_empty());
    }

    #[test]
    fn json_values_compare_by_content_not_by_text() {
        assert!(same_json("1", "1"));
        assert!(same_json(r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#));
        assert!(same_json(
            r#"{"a":{"x":1,"y":[1,2]}}"#,
            r#"{ "a": {"y":[1,2],"x":1} }"#
        ));
        assert!(!same_json("[1,2]", "[2,1]"), "arrays keep their order");
        assert!(!same_json(r#"{"a":1}"#, r#"{"a":1,"b":null}"#));
        assert!(
            !same_json("not json", "not json "),
            "undecodable text compares as text"
        );
    }
}
