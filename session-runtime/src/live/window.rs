//! The window of recent update ids a session keeps, so that a delivery of an update already
//! saved is recognised (ARCHITECTURE.md, "Redelivery").
//!
//! The ids are stored among the field writers, in slots named `@0`, `@1`, … (names no field
//! can have: '@' is reserved for the runtime), and the slot the next id takes in `@next`. The
//! slots form a ring, so an id stays in the window until as many ids as it has slots were
//! saved after it. Every patch records the ids of all the updates whose writes it carries; a
//! patch that carries more of them than the window has slots adds slots, up to
//! [`RECENT_MAX`].

use std::sync::atomic::{AtomicU64, Ordering};

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
/// Each patch carries a signature of its own in one of 32 signature slots of the record. A
/// writer keeps to one slot per session, and a slot another writer signed within the last
/// [`HORIZON_TICKS`] ticks is not its to take: a signature holds the writer's tag and the
/// tick it was made in. So while a writer sends patches to a session no other writer signs in
/// its slot, and it sends one patch of a key at a time: a record whose slot holds a patch's
/// signature shows that patch applied, however many ids other writers have pushed through the
/// window since (ARCHITECTURE.md, "Exactly once").
///
/// A signature is 63 bits: the tag's low [`TAG_BITS`], the tick (minutes, roughly) mod
/// 2^[`TICK_BITS`], and a count of this writer's patches mod 2^[`COUNT_BITS`].
#[derive(Debug)]
pub(crate) struct Signer {
    /// The low [`TAG_BITS`] of the writer's tag.
    tag: u64,
    sent: AtomicU64,
}

/// What a signature holds of the writer's tag: two writers share a slot only if their tags
/// agree in these bits (one pair in about a million).
const TAG_BITS: u32 = 20;
/// What it holds of the tick it was made in.
const TICK_BITS: u32 = 10;
/// What it holds of the writer's count of patches: a signature comes back after 2^33 patches.
const COUNT_BITS: u32 = 33;
/// Seconds per tick.
const TICK_SECONDS: u64 = 64;
/// How many ticks a slot stays its signer's after its last signature: about eleven minutes,
/// far beyond any save's deadline (the look-up after a timed-out save comes within it) and
/// any clock skew between hosts worth running on.
const HORIZON_TICKS: u64 = 10;

const fn low(bits: u32) -> u64 {
    (1 << bits) - 1
}

/// A signed patch's signature and the slot it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signature {
    slot: &'static str,
    value: i64,
}

impl Signature {
    /// Whether `record` holds this signature: the patch it signed applied.
    pub(crate) fn shown_by(&self, record: &Record) -> bool {
        record.writers.get(self.slot) == Some(&self.value)
    }
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
        Signer::with_tag(hasher.finish())
    }

    /// A signer with the given tag (tests that replay an interleaving pick it).
    pub(crate) fn with_tag(tag: u64) -> Self {
        Signer {
            tag: tag & low(TAG_BITS),
            sent: AtomicU64::new(0),
        }
    }

    /// The tick now, mod 2^[`TICK_BITS`].
    fn tick() -> u64 {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (seconds / TICK_SECONDS) & low(TICK_BITS)
    }

    /// Signs `patch` in this writer's slot of the session whose window is `window`, and
    /// returns the signature; `None` when every slot is another writer's (32 writers signed
    /// the session within the horizon): the patch goes unsigned and a look-up after a
    /// timed-out save relies on the window alone.
    pub(crate) fn sign(&self, window: &Window, patch: &mut Patch<'_>) -> Option<Signature> {
        let tick = Self::tick();
        let slot = self.slot(window, tick)?;
        let count = self.sent.fetch_add(1, Ordering::Relaxed) % low(COUNT_BITS) + 1;
        let signature = (self.tag << (TICK_BITS + COUNT_BITS)) | (tick << COUNT_BITS) | count;
        let value = i64::try_from(signature).ok()?;
        let slot = SIGNATURES[slot];
        patch.writers.push((slot, value));
        Some(Signature { slot, value })
    }

    /// A patch that writes nothing of the session, only a mark under a name of the runtime's
    /// own (a new value each time, so every store counts it as a write): what the runtime
    /// writes to prove the record's earlier writes replicated where a read does not
    /// (`Store::reads_are_durable`).
    pub(crate) fn mark(&self, patch: &mut Patch<'_>) {
        let count = self.sent.fetch_add(1, Ordering::Relaxed) % low(COUNT_BITS) + 1;
        let value = (self.tag << COUNT_BITS) | count;
        patch
            .writers
            .push((MARK, i64::try_from(value).unwrap_or(1)));
    }

    /// The slot this writer signs in: the one holding its tag, else the first from the slot
    /// its tag prefers that is empty or whose signature is older than the horizon.
    fn slot(&self, window: &Window, tick: u64) -> Option<usize> {
        let signed = |slot: usize| {
            window
                .signatures
                .iter()
                .find(|(s, _)| usize::from(*s) == slot)
                .map(|&(_, value)| value)
        };
        if let Some(&(slot, _)) = window
            .signatures
            .iter()
            .find(|(_, value)| value >> (TICK_BITS + COUNT_BITS) == self.tag)
        {
            return Some(usize::from(slot));
        }
        let preferred = usize::try_from(self.tag).unwrap_or(0) % SIGNATURES.len();
        (0..SIGNATURES.len())
            .map(|i| (preferred + i) % SIGNATURES.len())
            .find(|&slot| match signed(slot) {
                None => true,
                Some(value) => {
                    let made = (value >> COUNT_BITS) & low(TICK_BITS);
                    tick.wrapping_sub(made) & low(TICK_BITS) > HORIZON_TICKS
                }
            })
    }
}

/// The name of the mark [`Signer::mark`] writes.
const MARK: &str = "@mark";

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
    /// The signature slots the record holds, with their signatures (see [`Signer`]).
    signatures: Vec<(u8, u64)>,
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
        if let Some(slot) = name
            .strip_prefix("@s")
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|&slot| usize::from(slot) < SIGNATURES.len())
        {
            let signature = u64::try_from(id).unwrap_or(0);
            match self.signatures.iter_mut().find(|(s, _)| *s == slot) {
                Some(held) => held.1 = signature,
                None => self.signatures.push((slot, signature)),
            }
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
    use super::{
        COUNT_BITS, HORIZON_TICKS, RECENT_MAX, SIGNATURES, Signer, TICK_BITS, Window, ring_size,
    };
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

    /// A window whose record holds, in each of `slots`, a signature of a writer with `tag`
    /// made at `tick`.
    fn signed_by(slots: &[(usize, u64, u64)]) -> Window {
        let mut record = Record::default();
        for &(slot, tag, tick) in slots {
            let value = (tag << (TICK_BITS + COUNT_BITS)) | (tick << COUNT_BITS) | 1;
            record
                .writers
                .insert(SIGNATURES[slot].to_owned(), value as i64);
        }
        Window::of(&record)
    }

    #[test]
    fn two_writers_whose_tags_prefer_one_slot_sign_in_two() {
        let (first, second) = (Signer::with_tag(3), Signer::with_tag(3 + 32));
        assert_eq!(first.slot(&Window::default(), 100), Some(3));
        // The first signed: the second, seeing it, takes the next slot, and the first keeps
        // its own wherever its preference lies.
        let window = signed_by(&[(3, 3, 100)]);
        assert_eq!(second.slot(&window, 100), Some(4));
        assert_eq!(first.slot(&signed_by(&[(9, 3, 100)]), 100), Some(9));
    }

    #[test]
    fn a_slot_is_taken_over_only_past_the_horizon() {
        let window = signed_by(&[(3, 3, 100)]);
        let other = Signer::with_tag(3 + 32);
        assert_eq!(other.slot(&window, 100 + HORIZON_TICKS), Some(4));
        assert_eq!(other.slot(&window, 100 + HORIZON_TICKS + 1), Some(3));
        // The tick wraps: a signature made just before the wrap is still recent after it.
        let window = signed_by(&[(3, 3, (1 << TICK_BITS) - 1)]);
        assert_eq!(other.slot(&window, 2), Some(4));
    }

    #[test]
    fn a_writer_with_every_slot_taken_signs_nothing() {
        let taken: Vec<_> = (0..SIGNATURES.len())
            .map(|slot| (slot, 1000 + slot as u64, 7))
            .collect();
        let mut patch = Patch::new();
        let window = signed_by(&taken);
        assert_eq!(Signer::with_tag(5).slot(&window, 7), None);
        assert_eq!(Signer::with_tag(1000).slot(&window, 7), Some(0));
        // The signature a patch carries is in the record the patch leaves, and no other.
        let signer = Signer::with_tag(5);
        let signature = signer.sign(&Window::default(), &mut patch);
        let record = stored(Record::default(), &patch);
        assert!(signature.is_some_and(|s| s.shown_by(&record)));
        let next = signer.sign(&Window::of(&record), &mut Patch::new());
        assert!(next.is_some_and(|s| !s.shown_by(&record)));
    }
}
