//! Exclusive mode across processes: a lease on a key, kept in the key's own record
//! (ARCHITECTURE.md, "Exclusive mode").
//!
//! The lease is one reserved field of the record, [`LEASE_FIELD`], whose value names the
//! holder and the time (ms since the Unix epoch) until which it holds the key. Its *version*,
//! which every store already keeps per field, is the fencing token: a holder claims the lease
//! with a write conditional on the version it read, renews it the same way, and releases it in
//! the patch that saves its update, conditional on the version it last wrote. A holder whose
//! lease was taken over meets a conflict on the lease field, and its patch is refused whole,
//! in the same round trip as any other conditional write: no store needs anything beyond the
//! [`Store`] contract.
//!
//! Clocks only decide *when* a lease may be taken over (a process reads the holder's `until`
//! with its own clock); they never decide whether a write is applied, which is the version's
//! job. A holder also stops writing once its own monotonic deadline has passed, so a process
//! paused past its lease refuses itself before it reaches the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::Later;
use crate::error::StoreError;
use crate::store::{Patch, Record, Store, unix_ms as now_ms};

/// The stored name of the lease field. `@` cannot start a Rust field name, and the derive
/// refuses it in a `rename`, so no session field can collide with it.
pub(crate) const LEASE_FIELD: &str = "@lease";

/// The shortest lease: renewals run every third of it.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    holder: &'a str,
    /// Ms since the Unix epoch; 0 once released.
    until: i64,
}

/// A new lease holder: one middleware of this process, named by the process id, the time the
/// process started (a restarted process with a reused id is another holder) and a count.
pub(crate) fn new_holder() -> Arc<str> {
    static STARTED: OnceLock<i64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let started = *STARTED.get_or_init(now_ms);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Arc::from(format!("pid {} started {started} #{n}", std::process::id()))
}

fn encode(holder: &str, until: i64) -> String {
    let stored = Stored { holder, until };
    // A struct of a string and an integer always serialises; the fallback keeps this total.
    serde_json::to_string(&stored).unwrap_or_else(|_| format!("{{\"until\":{until}}}"))
}

/// What a record says of its key's lease.
pub(crate) struct Observed {
    /// The lease field's version: what a claim expects.
    pub(crate) version: u64,
    /// How long another process still holds the key, if it does.
    pub(crate) held_for: Option<Duration>,
    /// Whether a holder let its lease run out without releasing it.
    pub(crate) expired: bool,
}

pub(crate) fn observe(record: Option<&Record>, holder: &str) -> Observed {
    let version = record.map_or(0, |r| r.version(LEASE_FIELD));
    let stored = record
        .and_then(|r| r.get(LEASE_FIELD))
        .and_then(|text| serde_json::from_str::<Stored<'_>>(text).ok());
    let Some(stored) = stored else {
        // Never leased, or unreadable: claimable (the claim is conditional all the same).
        return Observed {
            version,
            held_for: None,
            expired: false,
        };
    };
    let left = stored.until.saturating_sub(now_ms());
    // A lease this holder left behind (its save failed before the release) is free to it:
    // the caller holds the key's in-process turn, so no other update of it is using it.
    let ours = stored.holder == holder;
    Observed {
        version,
        held_for: (left > 0 && !ours).then(|| Duration::from_millis(left.unsigned_abs())),
        expired: stored.until > 0 && left <= 0,
    }
}

/// A lease this process holds on one key.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The version of the lease field this holder last wrote: its fencing token.
    pub(crate) version: u64,
    /// From this instant on the holder no longer counts on the lease and writes nothing.
    pub(crate) deadline: Instant,
    pub(crate) ttl: Duration,
    pub(crate) holder: Arc<str>,
}

impl Lease {
    /// The patch by which `holder` claims (or renews) a lease whose field has `version` in the
    /// store.
    pub(crate) fn claim<'a>(
        holder: &str,
        version: u64,
        ttl: Duration,
        expiry: Option<Duration>,
    ) -> Patch<'a> {
        let until = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        Patch::new()
            .set_field(LEASE_FIELD, encode(holder, until))
            .expect_version(LEASE_FIELD, version)
            .with_ttl(expiry)
    }

    /// Whether the holder may still write.
    pub(crate) fn is_live(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Adds the release to `patch`, conditional on the lease still being this holder's.
    pub(crate) fn release_in(&self, patch: &mut Patch<'_>) {
        patch.set.push((LEASE_FIELD, encode(&self.holder, 0)));
        patch.expect.push((LEASE_FIELD, self.version));
    }
}

/// Whether a refused patch was refused for its lease field.
pub(crate) fn lost(error: &StoreError) -> bool {
    matches!(error, StoreError::Conflict { fields, .. } if fields.iter().any(|f| f == LEASE_FIELD))
}

/// The lease of one hold, shared with the task renewing it.
pub(crate) type Held = Arc<tokio::sync::Mutex<Option<Lease>>>;

/// Renews `held` every third of its term while the update runs, until it is released (set
/// to `None`), lost, or the task is aborted. A renewal that fails leaves the deadline as it
/// was: if none succeeds before it, the holder stops writing.
pub(crate) async fn renew(
    held: Held,
    store: Arc<dyn Store>,
    key: Arc<str>,
    expiry: Option<Duration>,
) {
    loop {
        let every = match &*held.lock().await {
            Some(lease) => lease.ttl / 3,
            None => return,
        };
        tokio::time::sleep(every).await;
        let mut guard = held.lock().await;
        let Some(lease) = guard.as_mut() else { return };
        if !lease.is_live() {
            return;
        }
        let started = Instant::now();
        let patch = Lease::claim(&lease.holder, lease.version, lease.ttl, expiry);
        // At most until the deadline: a renewal that comes back later changes nothing.
        let left = lease.deadline.saturating_duration_since(started);
        match tokio::time::timeout(left, store.apply(&key, &patch)).await {
            Ok(Ok(())) => {
                lease.version += 1;
                lease.deadline = started.later(lease.ttl);
            }
            Ok(Err(error)) if lost(&error) => {
                tracing::warn!(
                    key = &*key,
                    "the lease on this key was taken over by another process"
                );
                lease.deadline = started;
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(key = &*key, %error, "cannot renew the lease on this key; retrying");
            }
            Err(_) => {}
        }
    }
}
