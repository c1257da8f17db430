//! [`Sessions`]: what the updates of one session middleware share.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ErrorPolicy, SaveFailurePolicy, StalePolicy};
use crate::error::{FlushError, SessionError, StoreError};
use crate::live::entry::Entry;
use crate::live::expiry::Expiry;
use crate::live::lease;
use crate::live::registry::Registry;
use crate::schema::Schema;
use crate::stats::Stats;
use crate::store::Store;

/// The live sessions of one middleware, the store they are saved to, its policies and
/// counters.
pub(crate) struct Sessions<S> {
    pub(crate) registry: Registry<S>,
    pub(crate) store: Arc<dyn Store>,
    /// `"{namespace}:"`, what every stored key of this session type starts with.
    pub(crate) prefix: Arc<str>,
    /// The key strategy's name, for [`SessionError::NoKey`].
    pub(crate) strategy: &'static str,
    pub(crate) on_error: ErrorPolicy,
    pub(crate) stale: StalePolicy,
    pub(crate) save_failure: SaveFailurePolicy,
    /// Whether a delivery of an update already saved is recognised (by the update's id).
    pub(crate) redelivery: bool,
    /// In exclusive mode, how long an update waits for its turn on a key.
    pub(crate) exclusive: Option<Duration>,
    /// In exclusive mode across processes, how this middleware holds leases.
    pub(crate) lease: Option<lease::Terms>,
    pub(crate) expiry: Expiry,
    pub(crate) stats: Stats,
}

impl<S: Schema> Sessions<S> {
    /// Writes what `entry` has unsaved, as one patch (without a lease: no update holds it).
    /// `take_back`: a failed save takes back the writes it carried (see [`Entry::persist`](crate::live::entry::Entry::persist)).
    pub(crate) async fn persist(
        &self,
        entry: &Entry<S>,
        take_back: bool,
    ) -> Result<(), SessionError> {
        entry
            .persist(&*self.store, &self.expiry, &self.stats, None, take_back)
            .await
    }

    /// Deletes the stored session of `key` (a stored key, namespace included) and makes a live
    /// entry of it in this process forget it (ARCHITECTURE.md, "Erasure").
    pub(crate) async fn erase(&self, key: &Arc<str>) -> Result<(), StoreError> {
        let held = Held {
            registry: &self.registry,
            entry: self.registry.acquire(key, &*self.store),
        };
        held.entry.erase(&*self.store, &self.stats).await
    }

    /// Retries the save of every session whose last save failed and that no update
    /// holds; returns how many are still unsaved, with the first error.
    pub(crate) async fn flush(&self) -> Result<(), FlushError> {
        let mut failed = 0;
        let mut first = None;
        for entry in self.registry.hold_unsaved() {
            // What a flush writes belongs to no update that is delivered again: kept.
            let result = self.persist(&entry, false).await;
            self.registry.release(&entry, result.is_err());
            if let Err(error) = result {
                failed += 1;
                first.get_or_insert(error);
            }
        }
        match first {
            None => Ok(()),
            Some(error) => Err(FlushError::new(failed, error)),
        }
    }
}

/// A hold on an entry taken outside an update, given back when dropped (also when the future
/// holding it is cancelled). An entry kept for unsaved writes stays kept while it has some.
struct Held<'a, S: Schema> {
    registry: &'a Registry<S>,
    entry: Arc<Entry<S>>,
}

impl<S: Schema> Drop for Held<'_, S> {
    fn drop(&mut self) {
        let unsaved = self.entry.lock().has_changes();
        self.registry.release(&self.entry, unsaved);
    }
}
