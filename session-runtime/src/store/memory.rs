//! The default store: records in a map inside the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Cursor, Page, Patch, Record, Revision, Store, StoreFuture, page_of};
use crate::clock::Later;
use crate::error::StoreError;
use crate::inline_key::InlineKey as Key;

/// An in-process store. It holds encoded copies of the fields, never live values, so it
/// behaves like a remote store: what a session reads is what was saved.
///
/// Records with an expiry are removed once it passes: on the next read of that key, and by a
/// sweep that every write runs over the records that have expired (an ordered index keeps
/// that proportional to the number of expired records). [`MemoryStore::sweep`] runs it on
/// demand. Expiry uses `tokio::time`, so tests can drive it with `tokio::time::pause`.
///
/// Layout, for locality with many sessions: keys of up to 30 bytes live inside the hash
/// table, and each record's fields are one contiguous buffer, so a load touches two cache
/// lines rather than one per string. A patch that only rewrites fields the record holds,
/// with values of the same length, is applied in that buffer; any other is written out into
/// a new one.
///
/// Cloning is cheap and shares the records.
///
/// # Example
///
/// ```
/// use typed_session::MemoryStore;
///
/// let store = MemoryStore::new();
/// assert!(store.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Records>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.inner.lock().map.len())
            .finish()
    }
}

#[derive(Default)]
struct Records {
    map: HashMap<Key, Stored, foldhash::fast::RandomState>,
    /// Expiry index: the records that have an expiry, ordered by it.
    expiry: BTreeSet<(Instant, Key)>,
    /// The buffer the next patched record is written into (the replaced one becomes the next
    /// scratch), so steady-state writes do not allocate.
    scratch: Vec<u8>,
    /// Records created so far: the `life` of the next one (see [`Revision`]).
    lives: u64,
}

struct Stored {
    fields: Fields,
    expires_at: Option<Instant>,
    /// Which record of its key this is, and the applies since it was created.
    life: u64,
    writes: u64,
}

impl Stored {
    fn is_live(&self, now: impl FnOnce() -> Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now())
    }
}

/// A record's fields in one buffer: per field its name (a little-endian `u32` length and its
/// UTF-8 bytes), its value (the same, or the length `u32::MAX` alone for a removed field whose
/// version is kept), its version (a little-endian `u64`) and its writer (a little-endian
/// `i64`, [`NO_WRITER`] for none).
#[derive(Default)]
struct Fields(Vec<u8>);

/// The value length that marks a removed field.
const REMOVED: u32 = u32::MAX;

/// The writer of a field no update id was given for.
const NO_WRITER: i64 = i64::MIN;

/// One field of a stored record, as the bytes of the text it was written from (checked as
/// UTF-8 only when a record is read out, by [`Fields::to_record`]).
struct Field<'a> {
    name: &'a [u8],
    value: Option<&'a [u8]>,
    version: u64,
    writer: i64,
}

impl Fields {
    fn iter(&self) -> impl Iterator<Item = Field<'_>> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let name = take(&mut rest)?;
            let value = take_value(&mut rest)?;
            let (version, tail) = rest.split_first_chunk::<8>()?;
            let (writer, tail) = tail.split_first_chunk::<8>()?;
            rest = tail;
            Some(Field {
                name,
                value,
                version: u64::from_le_bytes(*version),
                writer: i64::from_le_bytes(*writer),
            })
        })
    }

    fn to_record(&self) -> Record {
        let mut record = Record::default();
        for field in self.iter() {
            let name = text(field.name);
            if let Some(value) = field.value {
                record.fields.insert(name.clone(), text(value));
            }
            if field.version != 0 {
                record.versions.insert(name.clone(), field.version);
            }
            if field.writer != NO_WRITER {
                record.writers.insert(name, field.writer);
            }
        }
        record
    }

    /// The fields `patch` expects at another version than they have.
    fn conflicts(&self, patch: &Patch<'_>) -> Vec<String> {
        let mut conflicts = Vec::new();
        for (field, expected) in &patch.expect {
            let version = self
                .iter()
                .find(|f| same(f.name, field.as_bytes()))
                .map_or(0, |f| f.version);
            if version != *expected {
                conflicts.push((*field).to_owned());
            }
        }
        conflicts
    }

    /// Writes the fields after `patch` into `out`: kept ones in their order, then new ones,
    /// each written one with its version plus one. The record is read once; `written` marks
    /// the patch's fields it already held (set fields first, then removed ones).
    fn patch_into(&self, patch: &Patch<'_>, out: Vec<u8>) -> Fields {
        let mut out = Fields(out);
        out.0.clear();
        out.0
            .reserve(self.0.len() + patch.bytes() + 16 * (patch.set.len() + patch.remove.len()));
        let sets = patch.set.len();
        let mut written = Marks::new(sets + patch.remove.len());
        // The patch's writers taken so far, so the ones left (the runtime's window of recent
        // updates) are added at the end without reading the record again for each.
        let mut named = Marks::new(patch.writers.len());
        let mut writer = |name: &[u8], old: i64| match patch
            .writers
            .iter()
            .position(|(n, _)| same(n.as_bytes(), name))
        {
            Some(j) => {
                named.set(j);
                patch.writers[j].1
            }
            None => old,
        };
        for field in self.iter() {
            let (name, version) = (field.name, field.version);
            if let Some(i) = patch.set.iter().position(|(n, _)| same(n.as_bytes(), name)) {
                written.set(i);
                let value = Some(patch.set[i].1.as_bytes());
                out.push(name, value, version + 1, writer(name, field.writer));
            } else if let Some(i) = patch.remove.iter().position(|n| same(n.as_bytes(), name)) {
                written.set(sets + i);
                out.push(name, None, version + 1, writer(name, field.writer));
            } else {
                out.push(name, field.value, version, writer(name, field.writer));
            }
        }
        for (i, (name, value)) in patch.set.iter().enumerate() {
            if !written.get(i) {
                let name = name.as_bytes();
                out.push(name, Some(value.as_bytes()), 1, writer(name, NO_WRITER));
            }
        }
        for (i, name) in patch.remove.iter().enumerate() {
            if !written.get(sets + i) {
                let name = name.as_bytes();
                out.push(name, None, 1, writer(name, NO_WRITER));
            }
        }
        // Writers of names neither held nor written, each once.
        for (j, (name, id)) in patch.writers.iter().enumerate() {
            if !named.get(j) && !patch.writers[..j].iter().any(|(n, _)| n == name) {
                out.push(name.as_bytes(), None, 0, *id);
            }
        }
        out
    }

    /// Applies `patch` in place when it only rewrites fields the record holds, each set value
    /// as long as the one it replaces, and records writers of names the record holds: the
    /// steady state of a session (a counter, the window's slots), which then costs no copy
    /// of the record. Returns `false`, with nothing changed, for any other patch, which
    /// [`patch_into`](Self::patch_into) writes out whole.
    fn patch_in_place(&mut self, patch: &Patch<'_>) -> bool {
        /// Fields rewritten at most (a patch of more is written out whole).
        const MOST: usize = 16;
        if !patch.remove.is_empty() || patch.set.len() > 64 || patch.writers.len() > 64 {
            return false;
        }
        // Per field to rewrite: where it starts, and which set and writer of the patch it
        // takes (indices below 64, checked above).
        let mut edits = [(0usize, None::<u8>, None::<u8>); MOST];
        let (mut count, mut written, mut named) = (0, 0u64, 0u64);
        let mut at = 0;
        while at < self.0.len() {
            let start = at;
            let Some(place) = Place::at(&self.0, start) else {
                return false;
            };
            let name = &self.0[place.name.0..place.name.1];
            let set = patch.set.iter().position(|(n, _)| same(n.as_bytes(), name));
            let writer = patch
                .writers
                .iter()
                .position(|(n, _)| same(n.as_bytes(), name));
            at = place.end;
            if set.is_none() && writer.is_none() {
                continue;
            }
            if let Some(i) = set {
                let same_length = place
                    .value
                    .is_some_and(|(start, end)| end - start == patch.set[i].1.len());
                if !same_length {
                    return false;
                }
                written |= 1 << i;
            }
            if let Some(j) = writer {
                named |= 1 << j;
            }
            let Some(edit) = edits.get_mut(count) else {
                return false;
            };
            let index = |i: usize| u8::try_from(i).ok();
            *edit = (start, set.and_then(index), writer.and_then(index));
            count += 1;
        }
        // A field set that the record does not hold (or a name set twice) and a writer of a
        // name it does not hold add entries: the record is written out whole.
        let every_set = written.count_ones() as usize == patch.set.len();
        let every_writer = patch.writers.iter().enumerate().all(|(j, (name, _))| {
            named & (1 << j) != 0 || patch.writers[..j].iter().any(|(n, _)| n == name)
        });
        if !every_set || !every_writer {
            return false;
        }
        for &(start, set, writer) in &edits[..count] {
            let Some(place) = Place::at(&self.0, start) else {
                continue;
            };
            if let (Some(i), Some((start, end))) = (set, place.value) {
                self.0[start..end].copy_from_slice(patch.set[usize::from(i)].1.as_bytes());
                // `Place::at` found all 16 bytes of version and writer inside the buffer.
                let version = &mut self.0[place.version..place.version + 8];
                let old = u64::from_le_bytes(version.try_into().unwrap_or_default());
                version.copy_from_slice(&(old + 1).to_le_bytes());
            }
            if let Some(j) = writer {
                let at = place.version + 8;
                self.0[at..at + 8].copy_from_slice(&patch.writers[usize::from(j)].1.to_le_bytes());
            }
        }
        true
    }

    fn push(&mut self, name: &[u8], value: Option<&[u8]>, version: u64, writer: i64) {
        // `apply` refuses parts of 4 GiB or more before they get here.
        let len = |part: &[u8]| u32::try_from(part.len()).unwrap_or(REMOVED - 1);
        self.0.extend_from_slice(&len(name).to_le_bytes());
        self.0.extend_from_slice(name);
        match value {
            Some(value) => {
                self.0.extend_from_slice(&len(value).to_le_bytes());
                self.0.extend_from_slice(value);
            }
            None => self.0.extend_from_slice(&REMOVED.to_le_bytes()),
        }
        self.0.extend_from_slice(&version.to_le_bytes());
        self.0.extend_from_slice(&writer.to_le_bytes());
    }
}

/// Where one field of a [`Fields`] buffer lies: its name, its value (`None` when removed),
/// its version (the writer follows it), and the next field.
struct Place {
    name: (usize, usize),
    value: Option<(usize, usize)>,
    version: usize,
    end: usize,
}

impl Place {
    /// The field that starts at `at` in `buffer`.
    fn at(buffer: &[u8], at: usize) -> Option<Place> {
        let length = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(buffer.get(at..at + 4)?.try_into().ok()?))
        };
        let name_len = usize::try_from(length(at)?).ok()?;
        let name = (at + 4, at + 4 + name_len);
        let (value, version) = match length(name.1)? {
            REMOVED => (None, name.1 + 4),
            len => {
                let start = name.1 + 4;
                let end = start + usize::try_from(len).ok()?;
                (Some((start, end)), end)
            }
        };
        let end = version + 16;
        (end <= buffer.len()).then_some(Place {
            name,
            value,
            version,
            end,
        })
    }
}

/// Which of a patch's entries (fields set or removed, writers) were met in the record: a bit
/// mask for the usual few, a vector beyond 64.
enum Marks {
    Few(u64),
    Many(Vec<bool>),
}

impl Marks {
    fn new(len: usize) -> Self {
        if len <= 64 {
            Marks::Few(0)
        } else {
            Marks::Many(vec![false; len])
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Marks::Few(bits) => *bits |= 1 << i,
            Marks::Many(marks) => marks[i] = true,
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Marks::Few(bits) => *bits & (1 << i) != 0,
            Marks::Many(marks) => marks[i],
        }
    }
}

/// Whether two field names are the same. Names are short (a field's, or the window's `@3`),
/// and most pairs differ in length or early: compared here byte by byte rather than by a
/// call to `memcmp` each.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A value: `None` for a removed field.
fn take_value<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*len) == REMOVED {
        *rest = tail;
        return Some(None);
    }
    take(rest).map(Some)
}

fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let (part, tail) = (tail.get(..len)?, tail.get(len..)?);
    *rest = tail;
    Some(part)
}

/// A name or value as text: always the bytes of a `&str` a patch held, so nothing is replaced.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Records {
    /// The live record of `key` and its revision; an expired one is removed.
    fn load(&mut self, key: &str) -> (Option<Record>, Revision) {
        match self.map.get(key.as_bytes()) {
            Some(stored) if !stored.is_live(Instant::now) => {
                self.remove(key);
                (None, Revision::Absent)
            }
            Some(stored) => (
                Some(stored.fields.to_record()),
                Revision::At {
                    life: stored.life,
                    writes: stored.writes,
                },
            ),
            None => (None, Revision::Absent),
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some((
            key,
            Stored {
                expires_at: Some(at),
                ..
            },
        )) = self.map.remove_entry(key.as_bytes())
        {
            self.expiry.remove(&(at, key));
        }
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some((at, _)) = self.expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.expiry.pop_first() {
                self.map.remove(key.as_bytes());
                removed += 1;
            }
        }
        removed
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of records held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every record whose expiry has passed; returns how many.
    pub fn sweep(&self) -> usize {
        self.inner.lock().sweep(Instant::now())
    }

    /// A copy of the record of `key` as stored, ignoring expiry (for tests and debugging).
    pub fn raw(&self, key: &str) -> Option<Record> {
        self.inner
            .lock()
            .map
            .get(key.as_bytes())
            .map(|s| s.fields.to_record())
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::ready(Ok(self.inner.lock().load(key).0))
    }

    /// The record and its revision, read under the store's lock.
    fn load_with_revision<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<(Option<Record>, Revision), StoreError>> {
        StoreFuture::ready(Ok(self.inner.lock().load(key)))
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        if let Err(error) = super::check_size("memory", patch) {
            return StoreFuture::ready(Err(error));
        }
        let too_long = patch
            .set
            .iter()
            .find(|(name, value)| name.len().max(value.len()) >= REMOVED as usize);
        if let Some((name, _)) = too_long {
            return StoreFuture::ready(Err(StoreError::Malformed {
                backend: "memory",
                key: key.to_owned(),
                field: (*name).to_owned(),
                message: "a field name or value of 4 GiB or more cannot be stored".to_owned(),
            }));
        }
        let mut records = self.inner.lock();
        let now = (patch.ttl.is_some() || !records.expiry.is_empty()).then(Instant::now);
        if let Some(now) = now {
            records.sweep(now);
        }
        let records = &mut *records;
        if !patch.expect.is_empty() {
            let stored = records.map.get(key.as_bytes());
            let conflicts = match stored {
                Some(stored) => stored.fields.conflicts(patch),
                None => Fields::default().conflicts(patch),
            };
            if !conflicts.is_empty() {
                let current = stored.map(|s| s.fields.to_record()).unwrap_or_default();
                return StoreFuture::ready(Err(StoreError::Conflict {
                    backend: "memory",
                    key: key.to_owned(),
                    fields: conflicts,
                    current: Some(Box::new(current)),
                }));
            }
        }
        let stored = match records.map.get_mut(key.as_bytes()) {
            Some(stored) => {
                stored.writes += 1;
                stored
            }
            // A renewal of a record that is gone (expired and swept above, or deleted).
            None if patch.only_renews() => return StoreFuture::ready(Ok(())),
            None => {
                records.lives += 1;
                let life = records.lives;
                records.map.entry(Key::new(key)).or_insert(Stored {
                    fields: Fields::default(),
                    expires_at: None,
                    life,
                    writes: 0,
                })
            }
        };
        if !stored.fields.patch_in_place(patch) {
            let patched = stored
                .fields
                .patch_into(patch, std::mem::take(&mut records.scratch));
            records.scratch = std::mem::replace(&mut stored.fields, patched).0;
        }
        if let (Some(ttl), Some(now)) = (patch.ttl, now) {
            let at = now.later(ttl.max(Duration::from_nanos(1)));
            if let Some(old) = stored.expires_at.replace(at) {
                records.expiry.remove(&(old, Key::new(key)));
            }
            records.expiry.insert((at, Key::new(key)));
        }
        StoreFuture::ready(Ok(()))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        self.inner.lock().remove(key);
        StoreFuture::ready(Ok(()))
    }

    /// A page costs one pass over the keys held, under the store's lock; the page itself is
    /// the only memory it takes.
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        let after = cursor.map(Cursor::as_str);
        let now = Instant::now();
        let records = self.inner.lock();
        // The `limit` least keys after the cursor, in a max-heap; one more tells whether the
        // walk goes on.
        let mut least = std::collections::BinaryHeap::with_capacity(limit.min(1024) + 1);
        for (key, stored) in &records.map {
            let key = key.as_str();
            let live = stored.expires_at.is_none_or(|at| at > now);
            if live && key.starts_with(prefix) && after.is_none_or(|after| key > after) {
                least.push(key);
                if least.len() > limit.saturating_add(1) {
                    least.pop();
                }
            }
        }
        let keys: Vec<String> = least
            .into_sorted_vec()
            .into_iter()
            .map(str::to_owned)
            .collect();
        drop(records);
        StoreFuture::ready(Ok(page_of(keys, limit)))
    }

    fn returns_written_text(&self) -> bool {
        true
    }

    /// Read under the store's lock: one table lookup.
    fn revision(&self, key: &str) -> Revision {
        match self.inner.lock().map.get(key.as_bytes()) {
            Some(stored) if stored.is_live(Instant::now) => Revision::At {
                life: stored.life,
                writes: stored.writes,
            },
            _ => Revision::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Fields, Patch};

    /// The record `patches` make, one after the other, each written out whole or, where it
    /// can be, in place; and how many went in place.
    fn both_ways(patches: &[Patch<'_>]) -> (Fields, Fields, usize) {
        let (mut whole, mut in_place, mut placed) = (Fields::default(), Fields::default(), 0);
        for patch in patches {
            whole = whole.patch_into(patch, Vec::new());
            if in_place.patch_in_place(patch) {
                placed += 1;
            } else {
                in_place = in_place.patch_into(patch, Vec::new());
            }
        }
        (whole, in_place, placed)
    }

    fn set<'a>(fields: &[(&'a str, &str)], writers: &[(&'a str, i64)]) -> Patch<'a> {
        let mut patch = Patch::new();
        for (name, value) in fields {
            patch = patch.set_field(name, *value);
        }
        patch.writers = writers.to_vec();
        patch
    }

    #[test]
    fn a_patch_in_place_leaves_the_record_a_whole_rewrite_would() {
        let start = set(
            &[("count", "10"), ("name", "\"ab\"")],
            &[("@0", 1), ("count", 1)],
        );
        let cases: Vec<(Patch<'_>, bool)> = vec![
            // Same lengths, known names: in place.
            (set(&[("count", "11")], &[("@0", 2), ("count", 2)]), true),
            (set(&[("name", "\"cd\""), ("count", "12")], &[]), true),
            (set(&[], &[("@0", 7), ("@0", 8)]), true),
            // A longer value, a new field, a new writer, a name set twice, a removal.
            (set(&[("count", "100")], &[("count", 3)]), false),
            (set(&[("other", "1")], &[]), false),
            (set(&[("count", "13")], &[("@1", 4)]), false),
            (set(&[("count", "14"), ("count", "15")], &[]), false),
            (set(&[], &[]).remove_field("name"), false),
            // And after a removal, setting the removed field again.
            (set(&[("name", "\"ef\"")], &[]), false),
        ];
        for (case, (patch, expect_in_place)) in cases.iter().enumerate() {
            let mut patches = vec![start.clone()];
            patches.extend(cases[..case].iter().map(|(p, _)| p.clone()));
            let (whole_before, _, _) = both_ways(&patches);
            patches.push(patch.clone());
            let (whole, in_place, _) = both_ways(&patches);
            assert_eq!(whole.to_record(), in_place.to_record(), "case {case}");
            let mut probe = whole_before;
            assert_eq!(probe.patch_in_place(patch), *expect_in_place, "case {case}");
        }
        let every: Vec<Patch<'_>> = std::iter::once(start)
            .chain(cases.into_iter().map(|(p, _)| p))
            .collect();
        let (whole, in_place, placed) = both_ways(&every);
        assert_eq!(whole.to_record(), in_place.to_record());
        assert_eq!(placed, 3);
    }
}
