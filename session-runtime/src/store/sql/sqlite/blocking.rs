//! Where a call runs: on the calling task when the connection is free and SQLite takes no
//! lock wait, else on a blocking thread, bounded by the busy timeout.

use std::time::Duration;

use rusqlite::Connection;

use super::{BACKEND, SqliteStore};
use crate::error::{StoreError, StoreOp};
use crate::store::{Patch, StoreFuture};

/// Whether SQLite refused for a lock another connection holds (the fast path waits for none).
pub(super) fn is_busy(error: &StoreError) -> bool {
    let StoreError::Backend { source, .. } = error else {
        return false;
    };
    matches!(
        source.downcast_ref::<rusqlite::Error>(),
        Some(rusqlite::Error::SqliteFailure(failure, _))
            if matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A patch's contents, owned, to move to a blocking thread.
pub(super) struct OwnedPatch {
    set: Vec<(String, String)>,
    remove: Vec<String>,
    ttl: Option<Duration>,
    expect: Vec<(String, u64)>,
    writers: Vec<(String, i64)>,
}

impl OwnedPatch {
    pub(super) fn new(patch: &Patch<'_>) -> Self {
        OwnedPatch {
            set: patch
                .set
                .iter()
                .map(|(f, v)| ((*f).to_owned(), v.clone()))
                .collect(),
            remove: patch.remove.iter().map(|f| (*f).to_owned()).collect(),
            ttl: patch.ttl,
            expect: patch
                .expect
                .iter()
                .map(|(f, v)| ((*f).to_owned(), *v))
                .collect(),
            writers: patch
                .writers
                .iter()
                .map(|(f, v)| ((*f).to_owned(), *v))
                .collect(),
        }
    }

    pub(super) fn patch(&self) -> Patch<'_> {
        let mut patch = Patch::new().with_ttl(self.ttl);
        patch.set = self
            .set
            .iter()
            .map(|(f, v)| (f.as_str(), v.clone()))
            .collect();
        patch.remove = self.remove.iter().map(String::as_str).collect();
        patch.expect = self.expect.iter().map(|(f, v)| (f.as_str(), *v)).collect();
        patch.writers = self.writers.iter().map(|(f, v)| (f.as_str(), *v)).collect();
        patch
    }
}

impl SqliteStore {
    /// Runs `work` on the connection: on the calling task when the connection is free and
    /// SQLite takes no lock wait (the usual case, no thread hop), otherwise on a blocking
    /// thread, where waiting for the connection and for another connection's lock is bounded
    /// by the busy timeout. `owned` is `work` again, taking what it needs by value.
    pub(super) fn run<'a, T: Send + 'static>(
        &'a self,
        op: StoreOp,
        key: &'a str,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
        owned: impl FnOnce() -> Box<
            dyn FnOnce(&SqliteStore, &mut Connection) -> Result<T, StoreError> + Send,
        >,
    ) -> StoreFuture<'a, Result<T, StoreError>> {
        if let Some(mut connection) = self.connection.try_lock() {
            self.settle(&mut connection, op, key);
            match work(&mut connection) {
                Err(error) if is_busy(&error) => {}
                done => return StoreFuture::ready(done),
            }
        }
        let owned = owned();
        let store = self.clone();
        StoreFuture::new(async move {
            let wait = store.busy_timeout;
            let blocking = tokio::task::spawn_blocking(move || {
                let Some(mut connection) = store.connection.try_lock_for(wait) else {
                    return Err(StoreError::backend(
                        BACKEND,
                        op,
                        "",
                        format!("the SQLite connection stayed busy for {wait:?}"),
                    ));
                };
                store.end_group(&mut connection, None);
                let _ = connection.busy_timeout(wait);
                let done = owned(&store, &mut connection);
                let _ = connection.busy_timeout(Duration::ZERO);
                done
            });
            blocking.await.unwrap_or_else(|error| {
                Err(StoreError::backend(
                    BACKEND,
                    op,
                    key,
                    format!("the SQLite call failed: {error}"),
                ))
            })
        })
    }
}
