//! The pure bookkeeping of one live value: per field, its version, whether it differs from
//! what the store holds, what the store holds, and what became of each write (saved, pending,
//! taken back); and building a patch from it and reconciling after one (ARCHITECTURE.md,
//! "Dirty tracking"). No I/O and no locks: `live/entry` drives it.

use crate::live::migrate::{self, Mark};
use crate::live::window::Window;
use crate::schema::{Schema, VERSION_FIELD};
use crate::store::Patch;

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
    pub(super) dirty: Dirty,
    /// The encoded value the store holds, `None` when it holds nothing for this field.
    pub(super) stored: Option<String>,
    /// The field's version in the store, as last seen: what the next write expects.
    pub(super) stored_version: u64,
    /// The update that last wrote the field in the store, if it had an id.
    pub(crate) writer: Option<i64>,
    /// The update that last wrote the field here, if it had an id: the writer the next patch
    /// records.
    pub(crate) wrote_by: Option<i64>,
    /// The newest local version whose fate is known: written to the store, or discarded.
    pub(super) decided: u64,
    /// The local versions whose writes were discarded (the newest few ranges), so the
    /// updates that made them learn it.
    pub(super) discarded: Vec<Discard>,
    /// The updates whose writes of this field are not decided yet, by the local version they
    /// made: the patch that carries the field records them all as saved updates.
    pub(super) pending: Vec<(u64, i64)>,
    /// What the save under way writes of the field (there is at most one per entry,
    /// behind its write gate).
    pub(super) in_flight: Option<InFlight>,
    /// How many running updates read the field: while any does, every patch expects the
    /// version it read, so no write based on a value another process has since changed is
    /// committed (ARCHITECTURE.md, "Serializable updates").
    pub(crate) readers: u32,
}

/// Local versions `(after, up_to]` of a field whose writes were discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Discard {
    pub(super) after: u64,
    pub(super) up_to: u64,
    /// Whether the store certainly holds none of them: the store refused their patch (a
    /// conflict), or they were never sent. Otherwise a save that carried them failed in a
    /// way that leaves the store's state unknown (a timeout may follow an applied write).
    pub(super) sure: bool,
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
pub(super) struct InFlight {
    /// The local version written.
    pub(super) version: u64,
    /// Set, rather than removed.
    pub(super) set: bool,
    /// The update recorded as its writer, if one is.
    pub(super) writer: Option<i64>,
}

/// How many discarded ranges a field remembers. Consecutive discards with no save between
/// them make one range when they are alike (both sure, or both not), so an update is told of
/// a discarded write unless, while it ran, one field had this many discards each followed by
/// a save or by one of the other kind.
const DISCARDS_KEPT: usize = 32;

impl FieldState {
    /// A field with nothing in the store and nothing written.
    pub(super) fn new() -> Self {
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
    pub(super) fn discard(&mut self, sure: bool) {
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
    pub(super) fn settled(&mut self) {
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
    pub(super) clock: u64,
    /// `clear()` was called and the record is still to be deleted.
    pub(crate) delete_pending: bool,
    /// Counts `clear()` calls, so the error policy takes back only this update's own clear.
    pub(crate) clear_epoch: u64,
    /// The ids of the latest updates whose writes the store holds: how a redelivery is
    /// recognised after another update wrote the same fields.
    pub(crate) recent: Window,
    /// The schema version the stored record carries (see `live/migrate`).
    pub(super) schema: Mark,
    /// The ids of the updates a patch carries, kept between saves to spare an allocation.
    pub(super) ids: Vec<i64>,
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
    pub(super) fn stamp_version(&self, patch: &mut Patch<'_>) -> bool {
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
    pub(super) fn holds(&self, index: usize, encoded: &str, defaults: &mut Option<S>) -> bool {
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
    pub(super) fn forget_in_flight(&mut self) {
        for field in self.fields.iter_mut() {
            field.in_flight = None;
        }
    }

    /// After a save that failed: takes back every write it carried, and every later write of
    /// those fields (built on them), back to what the store held before it. The store may
    /// hold them after all (a timeout can follow an applied write), so the discard is not
    /// sure: the updates that made them run again, and are recognised if it was applied.
    pub(super) fn discard_in_flight(&mut self) {
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
    pub(super) fn diff(
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
                    let mut encoded = spare_text();
                    if let Err(source) = self.value.encode_field_into(index, &mut encoded) {
                        self.forget_in_flight();
                        return Err((spec.name, source));
                    }
                    if self.holds(index, &encoded, &mut defaults) {
                        keep_text(encoded);
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
    pub(super) fn expect_reads(&self, patch: &mut Patch<'_>) {
        for (spec, field) in S::FIELDS.iter().zip(self.fields.iter()) {
            if field.readers > 0 && field.in_flight.is_none() {
                patch.expect.push((spec.name, field.stored_version));
            }
        }
    }

    /// The names of the fields with writes not yet in the store.
    pub(super) fn dirty_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        S::FIELDS
            .iter()
            .zip(self.fields.iter())
            .filter(|(_, field)| field.dirty != Dirty::Clean)
            .map(|(spec, _)| spec.name)
    }

    /// Puts into `patch` what writing field `index` (local `version`; set, else removed)
    /// expects of the store and which update wrote it last, adds every update whose write of
    /// it the patch carries to `ids`, and marks it in flight.
    pub(super) fn stage(
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
    pub(super) fn reconcile(&mut self, patch: &mut Patch<'_>) {
        // Fields were pushed in index order, so the set values come back in the same order.
        let mut values = patch.set.drain(..).map(|(_, value)| value);
        for field in self.fields.iter_mut() {
            let Some(written) = field.in_flight.take() else {
                continue;
            };
            field.writer = written.writer.or(field.writer);
            let stored = if written.set { values.next() } else { None };
            if let Some(old) = std::mem::replace(&mut field.stored, stored) {
                keep_text(old);
            }
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

thread_local! {
    /// Texts of values the store no longer holds, for the next encodings on this thread: a
    /// field written again and again is encoded into the buffer of its previous value.
    static TEXTS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many spare texts a thread keeps, and the largest it keeps (a rare large value is not
/// held on to).
const TEXTS_KEPT: usize = 8;
const TEXT_KEPT_BYTES: usize = 256;

/// An empty text, with room from an earlier one where a thread has some.
fn spare_text() -> String {
    TEXTS
        .with(|texts| texts.borrow_mut().pop())
        .unwrap_or_default()
}

/// Keeps `text`, which nothing needs any more, for [`spare_text`].
pub(super) fn keep_text(text: String) {
    if text.capacity() == 0 || text.capacity() > TEXT_KEPT_BYTES {
        return;
    }
    TEXTS.with(|texts| {
        let mut texts = texts.borrow_mut();
        if texts.len() < TEXTS_KEPT {
            texts.push(text);
        }
    });
}

/// Whether two encodings hold the same value. Equal text is the fast path; otherwise they are
/// compared as JSON values, so a map whose entries serialise in another order (a `HashMap`)
/// is still unchanged.
pub(super) fn same_json(a: &str, b: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::{Fate, FieldState, same_json};

    pub(crate) fn field() -> FieldState {
        FieldState::new()
    }

    #[test]
    pub(crate) fn a_write_is_saved_once_a_persist_covered_it_and_discarded_once_a_conflict_dropped_it()
     {
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
    pub(crate) fn a_failed_save_leaves_its_writes_unsure_and_consecutive_discards_of_a_kind_join() {
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
    pub(crate) fn only_the_newest_discards_are_remembered() {
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
    pub(crate) fn the_updates_a_field_waits_to_write_are_forgotten_once_decided_or_taken_back() {
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
    pub(crate) fn json_values_compare_by_content_not_by_text() {
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
