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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::inline_key::InlineKey;
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
    /// Kept decoded with no holder: its place in `Entries::idle`.
    idle: Option<usize>,
}

struct Entries<S> {
    /// Keyed inline (see [`InlineKey`]): the lookup of an update's key compares bytes in the
    /// slot it probed, not behind a pointer.
    by_key: HashMap<InlineKey, Live<S>, foldhash::fast::RandomState>,
    /// How many entries have at least one holder.
    held: usize,
    /// The keys of the entries kept decoded with no holder, idle longest first.
    idle: IdleList,
}

impl<S> Entries<S> {
    /// Drops the entries idle longest until at most `kept` are.
    fn trim(&mut self, kept: usize) {
        while self.idle.len > kept {
            let Some(key) = self.idle.pop_oldest() else {
                break;
            };
            self.by_key.remove(key.as_bytes());
        }
    }
}

/// The keys of the idle entries in the order they were released: a doubly linked list
/// threaded through a slab, so that taking an entry back, adding one and dropping the oldest
/// each cost a few writes to one dense array, never a scan or a hash.
#[derive(Default)]
struct IdleList {
    nodes: Vec<Node>,
    /// Nodes free for reuse.
    free: Vec<usize>,
    /// Idle longest, and most recently.
    oldest: Option<usize>,
    newest: Option<usize>,
    len: usize,
}

struct Node {
    key: Option<Arc<str>>,
    older: Option<usize>,
    newer: Option<usize>,
}

impl IdleList {
    /// Adds `key` as the newest; returns its place.
    fn push(&mut self, key: Arc<str>) -> usize {
        let node = Node {
            key: Some(key),
            older: self.newest,
            newer: None,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.nodes[at] = node;
                at
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        match self.newest {
            Some(newest) => self.nodes[newest].newer = Some(at),
            None => self.oldest = Some(at),
        }
        self.newest = Some(at);
        self.len += 1;
        at
    }

    /// Takes the key at `at` out of the list.
    fn remove(&mut self, at: usize) -> Option<Arc<str>> {
        let node = self.nodes.get_mut(at)?;
        let key = node.key.take()?;
        let (older, newer) = (node.older.take(), node.newer.take());
        match older {
            Some(older) => self.nodes[older].newer = newer,
            None => self.oldest = newer,
        }
        match newer {
            Some(newer) => self.nodes[newer].older = older,
            None => self.newest = older,
        }
        self.free.push(at);
        self.len -= 1;
        Some(key)
    }

    fn pop_oldest(&mut self) -> Option<Arc<str>> {
        self.remove(self.oldest?)
    }
}

/// The live entries of one session middleware, by key.
pub(crate) struct Registry<S> {
    entries: Mutex<Entries<S>>,
    idle: Notify,
    /// How many callers of [`wait_idle`](Self::wait_idle) are waiting: with none, the last
    /// release notifies nobody.
    watchers: AtomicUsize,
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
                idle: IdleList::default(),
            }),
            idle: Notify::new(),
            watchers: AtomicUsize::new(0),
        }
    }

    /// Takes a hold on the entry of `key`, creating it if no update holds it and none is
    /// kept decoded that `store` says is still current.
    pub(crate) fn acquire(&self, key: &str, store: &dyn Store) -> Arc<Entry<S>> {
        self.acquire_bytes(key.as_bytes(), || Arc::from(key), store)
    }

    /// [`acquire`](Self::acquire) for an update's key, as it keeps it: its text is checked
    /// (and copied) only when a new entry is made.
    pub(crate) fn acquire_inline(&self, key: &InlineKey, store: &dyn Store) -> Arc<Entry<S>> {
        self.acquire_bytes(key.as_bytes(), || Arc::from(key.as_str()), store)
    }

    fn acquire_bytes(
        &self,
        key: &[u8],
        owned: impl FnOnce() -> Arc<str>,
        store: &dyn Store,
    ) -> Arc<Entry<S>> {
        if let Some(entry) = self.hold_existing(&mut self.entries.lock(), key, store) {
            return entry;
        }
        // Build the entry (which runs the user's defaults) outside the lock.
        let key = owned();
        let fresh = Arc::new(Entry::new(Arc::clone(&key), Arc::clone(&self.signer)));
        let mut entries = self.entries.lock();
        if let Some(entry) = self.hold_existing(&mut entries, key.as_bytes(), store) {
            return entry;
        }
        entries.by_key.insert(
            InlineKey::new(&key),
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
        key: &[u8],
        store: &dyn Store,
    ) -> Option<Arc<Entry<S>>> {
        let live = entries.by_key.get_mut(key)?;
        if let Some(at) = live.idle.take() {
            entries.idle.remove(at);
            // Kept decoded: used as it is when the middleware trusts it (no check at all, on
            // any store: a patch built on an older value is refused by its versions); else
            // still current only if the store's record is the one it saw, or, when the store
            // cannot tell, while the entry keeps the key's lease (no other process may write
            // it then).
            let seen = live.entry.seen();
            let current = if self.cached {
                true
            } else if seen.is_known() {
                store.revision(&live.entry.key) == seen
            } else {
                live.entry.keeps_lease()
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
        let Some(live) = entries.by_key.get_mut(entry.key.as_bytes()) else {
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
        } else if self.keep > 0
            && (entry.seen().is_known()
                || (self.cached && entry.is_loaded())
                || entry.keeps_lease())
        {
            live.idle = Some(entries.idle.push(Arc::clone(&entry.key)));
            entries.trim(self.keep);
        } else {
            entries.by_key.remove(entry.key.as_bytes());
        }
        // A watcher counted itself before it read `held` under this lock (see `wait_idle`).
        if entries.held == 0 && self.watchers.load(Ordering::SeqCst) > 0 {
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
        entries.by_key.len() - entries.idle.len
    }

    /// The number of entries kept only because their last save failed.
    pub(crate) fn unsaved(&self) -> usize {
        let entries = self.entries.lock();
        entries.by_key.len() - entries.held - entries.idle.len
    }

    /// The number of entries no update holds that are kept decoded.
    pub(crate) fn idle(&self) -> usize {
        self.entries.lock().idle.len
    }

    /// Waits until no update holds an entry.
    pub(crate) async fn wait_idle(&self) {
        /// Counts a waiting caller for as long as it waits, cancelled or not.
        struct Watching<'a>(&'a AtomicUsize);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let _watching = Watching(&self.watchers);
        loop {
            let notified = self.idle.notified();
            if self.entries.lock().held == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::IdleList;

    fn keys(list: &mut IdleList) -> Vec<String> {
        std::iter::from_fn(|| list.pop_oldest())
            .map(|key| key.to_string())
            .collect()
    }

    #[test]
    fn idle_keys_leave_oldest_first_and_one_taken_back_leaves_no_gap() {
        let mut list = IdleList::default();
        let a = list.push(Arc::from("a"));
        let b = list.push(Arc::from("b"));
        let c = list.push(Arc::from("c"));
        assert_eq!(list.len, 3);
        // Taken back: the middle, then the newest.
        assert_eq!(list.remove(b).as_deref(), Some("b"));
        assert_eq!(list.remove(c).as_deref(), Some("c"));
        // A place taken back twice (or never given) yields nothing and changes nothing.
        assert_eq!(list.remove(b), None);
        assert_eq!(list.remove(99), None);
        // Freed places are reused; the order is the order of release.
        list.push(Arc::from("d"));
        list.push(Arc::from("e"));
        assert_eq!(list.nodes.len(), 3);
        assert_eq!(keys(&mut list), ["a", "d", "e"]);
        assert_eq!(list.len, 0);
        assert_eq!((list.oldest, list.newest), (None, None));
        assert_eq!(list.remove(a), None);
    }
}
