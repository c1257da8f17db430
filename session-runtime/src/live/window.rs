//! The window of recent update ids a session keeps, so that a delivery of an update already
//! saved is recognised (ARCHITECTURE.md, "Redelivery").
//!
//! The ids are stored among the field writers, in slots named `@0`, `@1`, … (names no field
//! can have: '@' is reserved for the runtime), and the slot the next id takes in `@next`. The
//! slots form a ring, so an id stays in the window until as many ids as it has slots were
//! saved after it. Every patch records the ids of all the updates whose writes it carries; a
//! patch that carries more of them than the window has slots adds slots, up to
//! [`RECENT_MAX`].

use crate::store::{Patch, Record};

/// How many slots a window has at least.
pub(crate) const RECENT_UPDATES: usize = 4;

/// How many slots it has at most.
pub(crate) const RECENT_MAX: usize = 64;

/// The slots' names.
const SLOTS: [&str; RECENT_MAX] = [
    "@0", "@1", "@2", "@3", "@4", "@5", "@6", "@7", "@8", "@9", "@10", "@11", "@12", "@13", "@14",
    "@15", "@16", "@17", "@18", "@19", "@20", "@21", "@22", "@23", "@24", "@25", "@26", "@27",
    "@28", "@29", "@30", "@31", "@32", "@33", "@34", "@35", "@36", "@37", "@38", "@39", "@40",
    "@41", "@42", "@43", "@44", "@45", "@46", "@47", "@48", "@49", "@50", "@51", "@52", "@53",
    "@54", "@55", "@56", "@57", "@58", "@59", "@60", "@61", "@62", "@63",
];

/// The slots of the writers' signatures (see [`Signer`]).
const SIGNATURES: [&str; 32] = [
    "@s0", "@s1", "@s2", "@s3", "@s4", "@s5", "@s6", "@s7", "@s8", "@s9", "@s10", "@s11", "@s12",
    "@s13", "@s14", "@s15", "@s16", "@s17", "@s18", "@s19", "@s20", "@s21", "@s22", "@s23", "@s24",
    "@s25", "@s26", "@s27", "@s28", "@s29", "@s30", "@s31",
];

/// How one writer (a session middleware, in one process) signs the patches it sends, so that
/// it can tell later whether one of them landed whatever other writers did since.
///
/// Each patch carries a signature of its own in the writer's slot, one of 32 chosen by the
/// writer's random tag. Other writers leave that slot alone unless their tag picks the same
/// one, and this writer sends one patch of a key at a time: so a record whose slot holds a
/// patch's signature shows that patch applied, however many ids other writers have pushed
/// through the ring since.
#[derive(Debug)]
pub(crate) struct Signer {
    slot: &'static str,
    tag: u64,
    sent: std::sync::atomic::AtomicU64,
}

impl Signer {
    /// A signer with a random tag.
    pub(crate) fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let tag = hasher.finish();
        Signer {
            slot: SIGNATURES[(tag % SIGNATURES.len() as u64) as usize],
            tag,
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A signature no other patch of this writer carries (positive, as every store keeps
    /// writers).
    pub(crate) fn next(&self) -> i64 {
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // An odd multiplier makes n -> n * m a bijection, and the top bit dropped after it
        // tells apart only counts 2^63 apart: no two patches share a signature.
        let signature = (self.tag ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & (i64::MAX as u64);
        i64::try_from(signature).unwrap_or(1)
    }

    /// Signs `patch` with `signature`.
    pub(crate) fn sign(&self, signature: i64, patch: &mut Patch<'_>) {
        patch.writers.push((self.slot, signature));
    }

    /// Whether `record` carries `signature`: the patch it signed applied.
    pub(crate) fn signed(&self, signature: i64, record: &Record) -> bool {
        record.writers.get(self.slot) == Some(&signature)
    }
}

/// The name under which the ring's cursor is stored: its size times [`RECENT_MAX`] plus the
/// slot the next id takes (the size is stored, since the slots not written yet are not).
const NEXT: &str = "@next";

/// The fewest slots a window keeps after a patch that adds `fresh` ids: room for them, for as
/// many again from the patches that follow (concurrent replicas save their own bursts while
/// one looks up whether its patch landed), and for the least a window holds.
fn ring_size(fresh: usize) -> usize {
    (2 * fresh + RECENT_UPDATES).min(RECENT_MAX)
}

/// A session's window of recent update ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// By slot; `None`: a slot nothing holds.
    ids: Vec<Option<i64>>,
    /// The slot the next id takes.
    next: usize,
}

impl Window {
    /// The window a record holds.
    pub(crate) fn of(record: &Record) -> Self {
        let mut window = Window::default();
        for (name, &id) in &record.writers {
            window.record(name, id);
        }
        window
    }

    /// Takes in a writer the store holds or was given: a slot, the cursor, or (ignored) the
    /// writer of a field.
    fn record(&mut self, name: &str, id: i64) {
        if name == NEXT {
            let cursor = usize::try_from(id).unwrap_or(0);
            let size = (cursor / RECENT_MAX).min(RECENT_MAX);
            if self.ids.len() < size {
                self.ids.resize(size, None);
            }
            self.next = cursor % RECENT_MAX;
            return;
        }
        let Some(slot) = name
            .strip_prefix('@')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&slot| slot < RECENT_MAX)
        else {
            return;
        };
        if self.ids.len() <= slot {
            self.ids.resize(slot + 1, None);
        }
        self.ids[slot] = Some(id);
    }

    /// Whether the window holds `id`.
    pub(crate) fn contains(&self, id: i64) -> bool {
        self.ids.contains(&Some(id))
    }

    /// Puts into `patch` the slots that `ids` (the updates whose writes it carries, each once)
    /// take, each in the slot after the last one written, and the cursor. An id the window
    /// already holds is written again, as the newest: what this process last read of the
    /// window may be stale (other processes' patches may have pushed it out since), and the
    /// look-up after a timed-out save wants every id the patch carried in the store. The ring
    /// grows to [`ring_size`] of the ids (up to [`RECENT_MAX`]; past that, the earliest are
    /// left out). The window itself takes them once the patch is written
    /// ([`written`](Self::written)). The slots are written without a condition: the window
    /// never makes two writers conflict (two writers of different fields at the same instant
    /// may take the same slot, and one id drop out).
    pub(crate) fn add_to(&self, ids: &[i64], patch: &mut Patch<'_>) {
        if ids.is_empty() {
            return;
        }
        let size = self.ids.len().max(ring_size(ids.len()));
        let mut skip = ids.len().saturating_sub(size);
        let mut next = self.next;
        for &id in ids {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let slot = next % size;
            patch.writers.push((SLOTS[slot], id));
            next = (slot + 1) % size;
        }
        let cursor = size * RECENT_MAX + next;
        patch
            .writers
            .push((NEXT, i64::try_from(cursor).unwrap_or(0)));
    }

    /// Takes in what a written patch put into the window.
    pub(crate) fn written(&mut self, patch: &Patch<'_>) {
        for &(name, id) in &patch.writers {
            self.record(name, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RECENT_MAX, Window, ring_size};
    use crate::store::{Patch, Record};

    /// The record a store holds after `patch` was applied over `record`'s writers.
    fn stored(mut record: Record, patch: &Patch<'_>) -> Record {
        for (name, id) in &patch.writers {
            record.writers.insert((*name).to_owned(), *id);
        }
        record
    }

    /// Saves `ids` one patch each over `record`.
    fn save_each(mut record: Record, ids: &[i64]) -> Record {
        for &id in ids {
            let mut patch = Patch::new();
            Window::of(&record).add_to(&[id], &mut patch);
            record = stored(record, &patch);
        }
        record
    }

    #[test]
    fn an_id_stays_until_as_many_ids_as_there_are_slots_came_after_it() {
        // One id a patch: the ring's least size for one id.
        let slots = ring_size(1) as i64;
        let ids: Vec<i64> = (1..=3 * slots).collect();
        let mut record = Record::default();
        for &id in &ids {
            record = save_each(record, &[id]);
            let window = Window::of(&record);
            for kept in (id - slots + 1).max(1)..=id {
                assert!(window.contains(kept), "{kept} after {id}");
            }
            if id > slots {
                assert!(!window.contains(id - slots), "{} after {id}", id - slots);
            }
        }
    }

    #[test]
    fn eviction_follows_the_order_of_saves_not_the_ids() {
        // A redelivered small id saved after larger ones is kept as the newest.
        let mut ids: Vec<i64> = (1..=ring_size(1) as i64).map(|i| i * 100).collect();
        ids.extend([5, 10_000, 20_000]);
        let window = Window::of(&save_each(Record::default(), &ids));
        assert!(window.contains(5) && window.contains(20_000));
        assert!(!window.contains(100) && !window.contains(300));
        assert!(window.contains(400));
    }

    #[test]
    fn a_patch_carrying_many_updates_records_them_all() {
        let ids: Vec<i64> = (1..=20).collect();
        let mut patch = Patch::new();
        Window::default().add_to(&ids, &mut patch);
        let record = stored(Record::default(), &patch);
        let window = Window::of(&record);
        let mut taken = Window::default();
        taken.written(&patch);
        assert_eq!(taken, window, "what the store holds, the window takes");
        assert!(ids.iter().all(|&id| window.contains(id)));
        // Beyond the most slots there are, the earliest are left out, and no slot is named
        // twice in one patch.
        let many: Vec<i64> = (1..=(RECENT_MAX as i64 + 6)).collect();
        let mut patch = Patch::new();
        Window::default().add_to(&many, &mut patch);
        let window = Window::of(&stored(Record::default(), &patch));
        assert!(!window.contains(6) && window.contains(7) && window.contains(70));
        assert_eq!(window.ids.len(), RECENT_MAX);
        let mut names: Vec<&str> = patch.writers.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), patch.writers.len());
    }

    #[test]
    fn ids_already_held_are_written_again_as_the_newest() {
        let mut patch = Patch::new();
        Window::default().add_to(&[7, 8], &mut patch);
        let record = stored(Record::default(), &patch);
        let window = Window::of(&record);
        let mut again = Patch::new();
        window.add_to(&[8], &mut again);
        assert_eq!(again.writers.first(), Some(&("@2", 8)));
        // Then as many ids as the ring has slots but one: 8 stays, 7 is gone.
        let after: Vec<i64> = (100..100 + ring_size(2) as i64 - 1).collect();
        let record = save_each(stored(record, &again), &after);
        let window = Window::of(&record);
        assert!(window.contains(8) && !window.contains(7));
    }

    #[test]
    fn the_ring_keeps_its_size_when_its_last_slots_are_empty() {
        let mut patch = Patch::new();
        Window::default().add_to(&(1..=10).collect::<Vec<_>>(), &mut patch);
        let record = stored(Record::default(), &patch);
        let window = Window::of(&record);
        assert_eq!(window.ids.len(), ring_size(10));
    }

    #[test]
    fn the_ids_of_a_large_patch_survive_the_next_few() {
        let mut record = Record::default();
        let burst: Vec<i64> = (1..=10).collect();
        let mut patch = Patch::new();
        Window::of(&record).add_to(&burst, &mut patch);
        record = stored(record, &patch);
        // As many again as the burst, and the least a window holds.
        for id in 11..(ring_size(10) as i64) {
            let mut patch = Patch::new();
            Window::of(&record).add_to(&[id], &mut patch);
            record = stored(record, &patch);
        }
        let window = Window::of(&record);
        assert!(burst.iter().all(|&id| window.contains(id)));
    }
}
