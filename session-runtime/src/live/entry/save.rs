//! Saving one live session: the patch built in steps (delete after `clear()`, stage, send,
//! a conflict's refresh, reconcile), one save of an entry at a time behind its write gate, a
//! patch whose call met its deadline sent again, and whether it landed read from the record
//! (ARCHITECTURE.md, "Save after the chain" and "Exactly once").

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::Instrument;

use super::Entry;
use crate::error::{SessionError, StoreError, StoreOp};
use crate::live::expiry::Expiry;
use crate::live::lease::{self, Lease};
use crate::live::migrate::{self, Mark};
use crate::live::state;
use crate::live::window::{Signature, Window};
use crate::schema::Schema;
use crate::stats::{Count, Latency, Stats};
use crate::store::{Patch, Record, Revision, Store};

/// How many times a patch whose call met its deadline is sent again before its updates are
/// told it failed (see [`Entry::send`]); a second deadline ends the resends, so a store that
/// does not answer costs an update at most two deadlines.
const RESENDS: usize = 3;

/// How a save attempt ended, for the updates that waited for it.
pub(super) struct Attempt {
    number: u64,
    /// `None`: saved. Otherwise the store's error (its backend, and as text: the error itself
    /// went to the update that made the attempt).
    failure: Option<(&'static str, String)>,
}

thread_local! {
    /// The vectors of the last patch this thread saw saved, emptied, for the next save: a
    /// save allocates no patch, and reuses memory the thread touched last rather than any
    /// one session's.
    static SPARE: std::cell::Cell<Patch<'static>> = std::cell::Cell::new(Patch::new());
}

/// Keeps the vectors of a patch a save is done with for the next one (see [`SPARE`]).
fn keep_spare(mut patch: Patch<'static>) {
    for (_, text) in patch.set.drain(..) {
        state::keep_text(text);
    }
    patch.remove.clear();
    patch.expect.clear();
    patch.writers.clear();
    SPARE.set(patch);
}

/// Whether anyone takes debug output from here: a `tracing` subscriber, or (through the
/// `log` fallback) a logger. A save's span is made only then: a span nobody takes still asks
/// `log` at every poll that enters and leaves it, some 490 instructions an update on the
/// memory store.
fn debug_wanted() -> bool {
    tracing::enabled!(tracing::Level::DEBUG) || log::log_enabled!(log::Level::Debug)
}

/// What a patch carries that tells whether it landed: the updates whose writes it carries,
/// and its signature.
struct Carried<'a> {
    ids: &'a [i64],
    signature: Option<Signature>,
}

impl<S: Schema> Entry<S> {
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

    /// Applies a patch of this entry's (behind its write gate). Once it is written, the entry
    /// holds as stored the record at the store's new revision if that revision is what this
    /// one apply made of the one the entry had seen (no other write came in between).
    pub(super) async fn write(
        &self,
        store: &dyn Store,
        patch: &Patch<'_>,
    ) -> Result<(), StoreError> {
        let applied = store.apply(&self.key, patch).await;
        // One apply past the revision seen is this one: no other write came in between, so
        // the revision before the apply needs no reading of its own. A refused patch is
        // followed by a refresh, which reads the revision again.
        let after = match applied {
            Ok(()) => store.applied_revision(&self.key),
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

    /// [`send`](Self::send) in a `session.save` span, for whoever takes debug output.
    async fn send_traced(
        &self,
        store: &dyn Store,
        patch: &Patch<'_>,
        carried: &Carried<'_>,
    ) -> (Result<(), StoreError>, bool) {
        let span = tracing::debug_span!(
            "session.save",
            session = S::NAME,
            key = &*self.key,
            set = patch.set.len(),
            removed = patch.remove.len(),
            bytes = patch.bytes(),
            outcome = tracing::field::Empty
        );
        let sent = self
            .send(store, patch, carried)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &sent.0 {
                Ok(()) => "saved",
                Err(StoreError::Conflict { .. }) => "conflict",
                Err(error) if error.is_deadline() => "deadline",
                Err(_) => "error",
            },
        );
        sent
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

        // The rare steps of a save are boxed, so that the future of every save stays small
        // (it is built, and moved, per update).
        if self.lock().delete_pending {
            Box::pin(self.delete_cleared(store, stats, lease.as_deref_mut()))
                .await
                .map_err(persist_error)?;
        }
        let mut patch = SPARE.take().with_ttl(expiry.ttl);
        let (ids, stamped, signature) = self.stage_patch(&mut patch)?;
        // A patch that writes anyway carries the lease's end at no cost (a kept lease then
        // lasts `linger` from this update); one that would write nothing else only when
        // the lease needs it. Without a lease, no clock is read.
        let lease_sent = lease.as_ref().map(|_| Instant::now());
        let ends_lease = lease
            .as_ref()
            .zip(lease_sent)
            .is_some_and(|(lease, sent)| !patch.is_empty() || lease.must_end(sent));
        if let (Some(lease), Some(sent)) = (lease.as_ref(), lease_sent)
            && ends_lease
        {
            lease.end_in(&mut patch, sent);
        }
        if patch.is_empty() {
            keep_spare(patch);
            ended(None);
            if expiry.reads_renew() && self.lock().is_stored() && expiry.claim_renewal(&self.key) {
                Box::pin(self.renew(store, expiry, stats)).await;
            }
            return Ok(());
        }

        let carried = Carried {
            ids: &ids,
            signature,
        };
        let timer = stats.start();
        // Traced saves are boxed: the future of every save stays small without them.
        let (applied, unsure) = if debug_wanted() {
            Box::pin(self.send_traced(store, &patch, &carried)).await
        } else {
            self.send(store, &patch, &carried).await
        };
        stats.took(Latency::Save, timer);
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
                return Err(
                    Box::pin(self.conflicted(store, &patch, &fields, current, !unsure)).await,
                );
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
        if let (Some(lease), Some(sent)) = (lease, lease_sent)
            && ends_lease
        {
            lease.ended(sent);
        }
        if patch.ttl.is_some() {
            expiry.written(&self.key);
        }
        stats.add(Count::Writes, 1);
        stats.add(Count::BytesWritten, patch.bytes() as u64);
        self.saved(&mut patch, ids, stamped);
        keep_spare(patch);
        Ok(())
    }

    /// The last step of a save: what `patch` wrote is now what the store holds, and the
    /// fields not written again since are clean.
    fn saved(&self, patch: &mut Patch<'_>, ids: Vec<i64>, stamped: bool) {
        tracing::debug!(
            session = S::NAME,
            key = &*self.key,
            set = patch.set.len(),
            removed = patch.remove.len(),
            "session saved"
        );
        let mut state = self.lock();
        state.recent.written(patch);
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
