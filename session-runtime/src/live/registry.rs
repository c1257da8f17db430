//! The live sessions of one middleware, by key, with the number of updates holding each
//! (ARCHITECTURE.md, "Sharing").
//!
//! An update takes a hold on its first session access and gives it back only after its
//! save has finished, so an update that arrives while an earlier one is still writing joins
//! the same entry and sees that write, never the older stored value.
//!
//! An entry no update holds is kept, decoded, while the store can tell that its record is
//! still the one the entry last read or wrote (ARCHITECTURE.md, "Decoded between updates"):
//! the next update of the key takes it without a load. At most [`IDLE_KEPT`] are kept unless
//! the middleware is built with another bound; the one idle longest goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::live::entry::Entry;
use crate::live::window::Signer;
use crate::schema::Schema;
use crate::store::Store;

/// How many entries no update holds a middleware keeps decoded, by default.
pub(crate) const IDLE_KEPT: usize = 10_000;

struct Live<S> {
    entry: Arc<Entry<S>>,
    holders: usize,
    /// Its last save failed: it is kept, dirty fields and all, until one succeeds.
    unsaved: bool,
    /// Kept decoded with no holder: when it was released (its place in `Entries::kept`).
    idle: Option<u64>,
}

struct Entries<S> {
    by_key: HashMap<Arc<str>, Live<S>, foldhash::fast::RandomState>,
    /// How many entries have at least one holder.
    held: usize,
    /// The entries kept decoded with no holder, oldest first, by key and release stamp; a
    /// stamp that no longer matches its entry's is a leftover, skipped.
    kept: VecDeque<(Arc<str>, u64)>,
    /// How many entries are kept decoded with no holder.
    idle_count: usize,
    /// The stamp of the next release.
    releases: u64,
}

impl<S> Entries<S> {
    /// Drops the entries idle longest until at most `kept` are, and the leftovers of the
    /// queue once they outnumber the entries in it.
    fn trim(&mut self, kept: usize) {
        while self.idle_count > kept {
            let Some((key, stamp)) = self.kept.pop_front() else {
                break;
            };
            if self
                .by_key
                .get(&key)
                .is_some_and(|live| live.idle == Some(stamp))
            {
                self.by_key.remove(&key);
                self.idle_count -= 1;
            }
        }
        if self.kept.len() > 2 * self.idle_count + 64 {
            let by_key = &self.by_key;
            self.kept.retain(|(key, stamp)| {
                by_key
                    .get(key)
                    .is_some_and(|live| live.idle == Some(*stamp))
            });
        }
    }
}

/// The live entries of one session middleware, by key.
pub(crate) struct Registry<S> {
    entries: Mutex<Entries<S>>,
    idle: Notify,
    /// The most entries kept decoded with no holder.
    keep: usize,
    /// How this middleware signs its patches, shared by its entries.
    signer: Arc<Signer>,
    /// Entries are kept decoded on every store and used without a check
    /// ([`Freshness::Cached`](crate::Freshness::Cached)).
    cached: bool,
}

impl<S: Schema> Registry<S> {
    pub(crate) fn new(keep: usize, cached: bool, signer: Signer) -> Self {
        Registry {
            keep,
            cached,
            signer: Arc::new(signer),
            entries: Mutex::new(Entries {
                by_key: HashMap::default(),
                held: 0,
                kept: VecDeque::new(),
                idle_count: 0,
                releases: 0,
            }),
            idle: Notify::new(),
        }
    }

    /// Takes a hold on the entry of `key`, creating it if no update holds it and none is
    /// kept decoded that `store` says is still current.
    pub(crate) fn acquire(&self, key: &Arc<str>, store: &dyn Store) -> Arc<Entry<S>> {
        if let Some(entry) = self.hold_existing(&mut self.entries.lock(), key, store) {
            return entry;
        }
        // Build the entry (which runs the user's defaults) outside the lock.
        let fresh = Arc::new(Entry::new(Arc::clone(key), Arc::clone(&self.signer)));
        let mut entries = self.entries.lock();
        if let Some(entry) = self.hold_existing(&mut entries, key, store) {
            return entry;
        }
        entries.by_key.insert(
            Arc::clone(key),
            Live {
                entry: Arc::clone(&fresh),
                holders: 1,
                unsaved: false,
                idle: None,
            },
        );
        entries.held += 1;
        fresh
    }

    fn hold_existing(
        &self,
        entries: &mut Entries<S>,
        key: &str,
        store: &dyn Store,
    ) -> Option<Arc<Entry<S>>> {
        let live = entries.by_key.get_mut(key)?;
        if live.idle.take().is_some() {
            entries.idle_count -= 1;
            // Kept decoded: still current only if the store's record is the one it saw; used
            // as it is when the store cannot tell and the middleware trusts it.
            let seen = live.entry.seen();
            let current = if seen.is_known() {
                store.revision(key) == seen
            } else {
                self.cached
            };
            if !current {
                entries.by_key.remove(key);
                return None;
            }
        }
        live.holders += 1;
        let entry = Arc::clone(&live.entry);
        if live.holders == 1 {
            entries.held += 1;
        }
        Some(entry)
    }

    /// Gives back a hold. The entry is dropped with its last holder, unless that holder's
    /// save failed (`unsaved`): then it stays, so its changes are not lost; or the store's
    /// revision of what it holds is known: then it is kept decoded for the next update.
    pub(crate) fn release(&self, entry: &Arc<Entry<S>>, unsaved: bool) {
        let mut guard = self.entries.lock();
        let entries = &mut *guard;
        let Some(live) = entries.by_key.get_mut(&entry.key) else {
            return;
        };
        if !Arc::ptr_eq(&live.entry, entry) || live.holders == 0 {
            return;
        }
        live.holders -= 1;
        live.unsaved = unsaved;
        if live.holders > 0 {
            return;
        }
        entries.held -= 1;
        if unsaved {
            // Kept for its changes, see `hold_unsaved`.
        } else if self.keep > 0 && (entry.seen().is_known() || (self.cached && entry.is_loaded())) {
            let stamp = entries.releases;
            live.idle = Some(stamp);
            entries.releases += 1;
            entries.kept.push_back((Arc::clone(&entry.key), stamp));
            entries.idle_count += 1;
            entries.trim(self.keep);
        } else {
            entries.by_key.remove(&entry.key);
        }
        if entries.held == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Holds every entry whose last save failed and no update holds, to retry it.
    pub(crate) fn hold_unsaved(&self) -> Vec<Arc<Entry<S>>> {
        let mut entries = self.entries.lock();
        let mut held = Vec::new();
        for live in entries.by_key.values_mut() {
            if live.unsaved && live.holders == 0 {
                live.holders = 1;
                held.push(Arc::clone(&live.entry));
            }
        }
        entries.held += held.len();
        held
    }

    /// The number of live entries, unsaved ones included (not those only kept decoded).
    pub(crate) fn len(&self) -> usize {
        let entries = self.entries.lock();
        entries.by_key.len() - entries.idle_count
    }

    /// The number of entries kept only because their last save failed.
    pub(crate) fn unsaved(&self) -> usize {
        let entries = self.entries.lock();
        entries.by_key.len() - entries.held - entries.idle_count
    }

    /// The number of entries no update holds that are kept decoded.
    pub(crate) fn idle(&self) -> usize {
        self.entries.lock().idle_count
    }

    /// Waits until no update holds an entry.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.entries.lock().held == 0 {
                return;
            }
            notified.await;
        }
    }
}
