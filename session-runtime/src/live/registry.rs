//! The live sessions of one middleware, by key, with the number of updates holding each
//! (ARCHITECTURE.md, "Sharing").
//!
//! An update takes a hold on its first session access and gives it back only after its
//! persist has finished, so an update that arrives while an earlier one is still writing joins
//! the same entry and sees that write, never the older stored value.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::live::entry::Entry;
use crate::schema::Schema;

struct Live<S> {
    entry: Arc<Entry<S>>,
    holders: usize,
    /// Its last persist failed: it is kept, dirty fields and all, until one succeeds.
    unsaved: bool,
}

struct Entries<S> {
    by_key: HashMap<Arc<str>, Live<S>>,
    /// How many entries have at least one holder.
    held: usize,
}

/// The live entries of one session middleware, by key.
pub(crate) struct Registry<S> {
    entries: Mutex<Entries<S>>,
    idle: Notify,
}

impl<S: Schema> Registry<S> {
    pub(crate) fn new() -> Self {
        Registry {
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                held: 0,
            }),
            idle: Notify::new(),
        }
    }

    /// Takes a hold on the entry of `key`, creating it if no update holds it.
    pub(crate) fn acquire(&self, key: &Arc<str>) -> Arc<Entry<S>> {
        if let Some(entry) = self.hold_existing(&mut self.entries.lock(), key) {
            return entry;
        }
        // Build the entry (which runs the user's defaults) outside the lock.
        let fresh = Arc::new(Entry::new(Arc::clone(key)));
        let mut entries = self.entries.lock();
        if let Some(entry) = self.hold_existing(&mut entries, key) {
            return entry;
        }
        entries.by_key.insert(
            Arc::clone(key),
            Live {
                entry: Arc::clone(&fresh),
                holders: 1,
                unsaved: false,
            },
        );
        entries.held += 1;
        fresh
    }

    fn hold_existing(&self, entries: &mut Entries<S>, key: &str) -> Option<Arc<Entry<S>>> {
        let live = entries.by_key.get_mut(key)?;
        live.holders += 1;
        let entry = Arc::clone(&live.entry);
        if live.holders == 1 {
            entries.held += 1;
        }
        Some(entry)
    }

    /// Gives back a hold. The entry is dropped with its last holder, unless that holder's
    /// persist failed (`unsaved`): then it stays, so its changes are not lost.
    pub(crate) fn release(&self, entry: &Arc<Entry<S>>, unsaved: bool) {
        let mut entries = self.entries.lock();
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
        if !unsaved {
            entries.by_key.remove(&entry.key);
        }
        entries.held -= 1;
        if entries.held == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Holds every entry whose last persist failed and no update holds, to retry it.
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

    /// The number of live entries, unsaved ones included.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().by_key.len()
    }

    /// The number of entries kept only because their last persist failed.
    pub(crate) fn unsaved(&self) -> usize {
        let entries = self.entries.lock();
        entries.by_key.len() - entries.held
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
