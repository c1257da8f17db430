//! The default store: records in a map inside the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{BoxFuture, Patch, Record, Store};
use crate::error::StoreError;

/// An in-process store. It holds encoded copies of the fields, never live values, so it
/// behaves like a remote store: what a session reads is what was persisted.
///
/// Records with an expiry are removed once it passes: on the next read of that key, and by a
/// sweep that every write runs over the records that have expired (an ordered index keeps
/// that proportional to the number of expired records). [`MemoryStore::sweep`] runs it on
/// demand. Expiry uses `tokio::time`, so tests can drive it with `tokio::time::pause`.
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

#[derive(Default)]
struct Records {
    map: HashMap<String, Stored>,
    /// Expiry index: the records that have an expiry, ordered by it.
    expiry: BTreeSet<(Instant, String)>,
}

struct Stored {
    fields: Record,
    expires_at: Option<Instant>,
}

impl Records {
    fn remove(&mut self, key: &str) {
        if let Some(Stored {
            expires_at: Some(at),
            ..
        }) = self.map.remove(key)
        {
            self.expiry.remove(&(at, key.to_owned()));
        }
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some((at, _)) = self.expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.expiry.pop_first() {
                self.map.remove(&key);
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
        self.inner.lock().map.get(key).map(|s| s.fields.clone())
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        let now = Instant::now();
        let mut records = self.inner.lock();
        let expired =
            matches!(records.map.get(key), Some(Stored { expires_at: Some(at), .. }) if *at <= now);
        if expired {
            records.remove(key);
        }
        let found = records.map.get(key).map(|s| s.fields.clone());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Instant::now();
        let mut records = self.inner.lock();
        records.sweep(now);
        let records = &mut *records;
        let stored = records.map.entry(key.to_owned()).or_insert_with(|| Stored {
            fields: Record::new(),
            expires_at: None,
        });
        for (field, value) in &patch.set {
            match stored.fields.get_mut(*field) {
                Some(slot) => value.clone_into(slot),
                None => {
                    stored.fields.insert((*field).to_owned(), value.clone());
                }
            }
        }
        for field in &patch.remove {
            stored.fields.remove(*field);
        }
        if let Some(ttl) = patch.ttl {
            let at = now + ttl.max(Duration::from_nanos(1));
            if let Some(old) = stored.expires_at.replace(at) {
                records.expiry.remove(&(old, key.to_owned()));
            }
            records.expiry.insert((at, key.to_owned()));
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.lock().remove(key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn returns_written_text(&self) -> bool {
        true
    }
}
