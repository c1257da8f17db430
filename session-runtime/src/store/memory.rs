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
/// lines rather than one per string.
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
                .find(|f| f.name == field.as_bytes())
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
            .position(|(n, _)| n.as_bytes() == name)
        {
            Some(j) => {
                named.set(j);
                patch.writers[j].1
            }
            None => old,
        };
        for field in self.iter() {
            let (name, version) = (field.name, field.version);
            if let Some(i) = patch.set.iter().position(|(n, _)| n.as_bytes() == name) {
                written.set(i);
                let value = Some(patch.set[i].1.as_bytes());
                out.push(name, value, version + 1, writer(name, field.writer));
            } else if let Some(i) = patch.remove.iter().position(|n| n.as_bytes() == name) {
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
        let mut records = self.inner.lock();
        let found = match records.map.get(key.as_bytes()) {
            Some(stored) if !stored.is_live(Instant::now) => {
                records.remove(key);
                None
            }
            Some(stored) => Some(stored.fields.to_record()),
            None => None,
        };
        StoreFuture::ready(Ok(found))
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
        let patched = stored
            .fields
            .patch_into(patch, std::mem::take(&mut records.scratch));
        records.scratch = std::mem::replace(&mut stored.fields, patched).0;
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
