//! Group commit: the patches of updates in flight together share one transaction, each
//! caller answered once it is committed; patches that come one at a time commit on their own.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rusqlite::Connection;

use super::{BACKEND, SqliteStore, error};
use crate::error::{StoreError, StoreOp};
use crate::store::Patch;

/// The transaction open on the connection for group commit, and the keys it wrote.
#[derive(Default)]
pub(super) struct Group {
    open: Option<Arc<Batch>>,
    keys: HashSet<String>,
    /// How many groups in a row had one patch only: no other update was ready to share them.
    lonely: u32,
    /// How many patches committed on their own since a group was last tried.
    alone: u32,
}

/// After this many groups of one patch in a row, patches commit on their own: one update at a
/// time, a group only adds its yield and its explicit transaction.
const LONELY_GROUPS: u32 = 4;

/// While patches commit on their own, every this many a group is tried again, to notice that
/// updates are in flight together once more.
const PROBE_EVERY: u32 = 32;

impl Group {
    /// Whether the next patch commits on its own rather than opening a group: the last groups
    /// found no company, and it is not yet time to try one again. A patch always joins a group
    /// that is open.
    pub(super) fn goes_alone(&mut self) -> bool {
        if self.open.is_some() || self.lonely < LONELY_GROUPS {
            return false;
        }
        if self.alone >= PROBE_EVERY {
            self.alone = 0;
            return false;
        }
        self.alone += 1;
        true
    }

    /// Whether `batch` is the transaction open now.
    fn is_open(&self, batch: &Arc<Batch>) -> bool {
        self.open
            .as_ref()
            .is_some_and(|open| Arc::ptr_eq(open, batch))
    }
}

/// The patches of one group transaction.
#[derive(Default)]
pub(super) struct Batch {
    /// How it ended: set once, by whoever ends it, before anyone learns it ended.
    outcome: OnceLock<Result<(), String>>,
    /// The callers that wrote in it and have not learnt the outcome yet.
    waiting: AtomicUsize,
    /// The patches written in it.
    members: AtomicUsize,
}

impl SqliteStore {
    /// Commits the open group transaction (`only`: if it is that one), rolls it back if the
    /// commit fails, and records how it ended for its callers.
    pub(super) fn end_group(&self, connection: &mut Connection, only: Option<&Arc<Batch>>) {
        let Some(group) = &self.group else {
            return;
        };
        let mut group = group.lock();
        if only.is_some_and(|batch| !group.is_open(batch)) {
            return;
        }
        let Some(batch) = group.open.take() else {
            return;
        };
        group.keys.clear();
        group.lonely = if batch.members.load(Ordering::Acquire) > 1 {
            0
        } else {
            group.lonely.saturating_add(1)
        };
        let outcome = connection
            .prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]))
            .map(|_| ())
            .map_err(|e| format!("the group commit failed: {e}"));
        if outcome.is_err() && !connection.is_autocommit() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        self.revisions.lock().ended(outcome.is_ok());
        let _ = batch.outcome.set(outcome);
    }

    /// Whether the open group transaction wrote `key`.
    pub(super) fn group_wrote(&self, key: &str) -> bool {
        self.group
            .as_ref()
            .is_some_and(|group| group.lock().keys.contains(key))
    }

    /// Before a call other than a grouped patch: ends the open group transaction, unless the
    /// call is a load of a key it did not write.
    pub(super) fn settle(&self, connection: &mut Connection, op: StoreOp, key: &str) {
        let Some(group) = &self.group else {
            return;
        };
        let open = {
            let group = group.lock();
            group.open.is_some() && (op != StoreOp::Load || group.keys.contains(key))
        };
        if open {
            self.end_group(connection, None);
        }
    }

    /// Writes `patch` inside the open group transaction, opening one if there is none; the
    /// batch it joined, or `None` if it was written on its own.
    pub(super) fn apply_grouped_on(
        &self,
        connection: &mut Connection,
        group: &Mutex<Group>,
        key: &str,
        patch: &Patch<'_>,
    ) -> Result<Option<Arc<Batch>>, StoreError> {
        let batch = {
            let mut group = group.lock();
            match &group.open {
                Some(batch) if !connection.is_autocommit() => Arc::clone(batch),
                _ => {
                    if let Some(gone) = group.open.take() {
                        // SQLite ended it itself: a failed statement rolled it back.
                        self.revisions.lock().ended(false);
                        let _ = gone
                            .outcome
                            .set(Err("the group transaction was rolled back".to_owned()));
                        group.keys.clear();
                    }
                    connection
                        .prepare_cached("BEGIN IMMEDIATE")
                        .and_then(|mut begin| begin.execute([]))
                        .map_err(|e| error(StoreOp::Apply, key, e))?;
                    let batch = Arc::new(Batch::default());
                    group.open = Some(Arc::clone(&batch));
                    batch
                }
            }
        };
        if let Err(refused) = self.apply_on(connection, key, patch) {
            if batch.waiting.load(Ordering::Acquire) == 0 {
                // No one else wrote in it yet: no one else would end it.
                self.end_group(connection, Some(&batch));
            }
            return Err(refused);
        }
        let mut group = group.lock();
        if !group.is_open(&batch) {
            // The patch needed a transaction of its own, which ended the group first.
            return Ok(None);
        }
        group.keys.insert(key.to_owned());
        batch.waiting.fetch_add(1, Ordering::AcqRel);
        batch.members.fetch_add(1, Ordering::AcqRel);
        Ok(Some(batch))
    }
}

/// A caller whose patch is in a group transaction, until it learns how that ended.
pub(super) struct Member<'a> {
    pub(super) store: &'a SqliteStore,
    pub(super) batch: Arc<Batch>,
}

impl Member<'_> {
    /// Lets the other updates ready to run write their patches, then ends the transaction if
    /// no one has, and answers with how it ended.
    pub(super) async fn outcome(self, key: &str) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        if self.batch.outcome.get().is_none() {
            // `run` ends the open group before any call but a load.
            self.store
                .run(StoreOp::Apply, key, |_| Ok(()), || Box::new(|_, _| Ok(())))
                .await?;
        }
        match self.batch.outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(message)) => Err(StoreError::backend(
                BACKEND,
                StoreOp::Apply,
                key,
                message.clone(),
            )),
            None => Err(StoreError::backend(
                BACKEND,
                StoreOp::Apply,
                key,
                "the group transaction did not end",
            )),
        }
    }
}

impl Drop for Member<'_> {
    /// The last caller of a transaction gone before it ended (its update was cancelled) ends
    /// it, so that this process never keeps the write lock with no one to commit.
    fn drop(&mut self) {
        if self.batch.waiting.fetch_sub(1, Ordering::AcqRel) != 1
            || self.batch.outcome.get().is_some()
        {
            return;
        }
        if let Some(mut connection) = self.store.connection.try_lock() {
            self.store.end_group(&mut connection, Some(&self.batch));
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, batch) = (self.store.clone(), Arc::clone(&self.batch));
            runtime.spawn_blocking(move || {
                if let Some(mut connection) = store.connection.try_lock_for(store.busy_timeout) {
                    store.end_group(&mut connection, Some(&batch));
                }
            });
        }
    }
}
