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
    /// Kept after an update ended, for the holder's next update of the key: no update of
    /// the holder runs under it, so letting it run out is no fault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    kept: bool,
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

fn encode(holder: &str, until: i64, kept: bool) -> String {
    let stored = Stored {
        holder,
        until,
        kept,
    };
    // A struct of a string and an integer always serialises; the fallback keeps this total.
    serde_json::to_string(&stored).unwrap_or_else(|_| format!("{{\"until\":{until}}}"))
}

/// What a record says of its key's lease.
pub(crate) struct Observed {
    /// The lease field's version: what a claim expects.
    pub(crate) version: u64,
    /// How long another process still holds the key, if it does.
    pub(crate) held_for: Option<Duration>,
    /// Whether a holder let its lease run out while an update of its ran (not a lease kept
    /// between updates, which is meant to run out).
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
        expired: stored.until > 0 && left <= 0 && !stored.kept,
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
    /// How long the lease is kept after an update ends, for the next update of the key in
    /// this process; zero releases it in the update's patch.
    pub(crate) linger: Duration,
    /// When it was claimed from the store (a lease kept between updates is held continuously
    /// since then).
    pub(crate) since: Instant,
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
        Patch::new()
            .set_field(LEASE_FIELD, encode(holder, until(ttl), false))
            .expect_version(LEASE_FIELD, version)
            .with_ttl(expiry)
    }

    /// Whether the holder may still write.
    pub(crate) fn is_live(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Whether a lease kept from an earlier update is worth taking for the next: at least half
    /// of `linger` left, so that the update rarely needs a renewal (which would cost the
    /// store call the kept lease saves).
    pub(crate) fn is_reusable(&self) -> bool {
        self.deadline.saturating_duration_since(Instant::now()) >= self.linger / 2
    }

    /// Whether the end of an update at `now` keeps the lease for the holder's next update of
    /// the key: it is kept at all, and has not been held for a whole term since it was
    /// claimed (then it is released, so that a process waiting for the key gets a chance at it).
    pub(crate) fn kept_after(&self, now: Instant) -> bool {
        !self.linger.is_zero() && now < self.since.later(self.ttl)
    }

    /// Whether the end of an update at `now` must write the lease even when it writes nothing
    /// else: to release it, to claim it again after a `clear()` deleted it with the record,
    /// or to bring a term that a claim or a renewal set back to `linger` from now. A lease
    /// kept from the previous update, and not renewed since, already ends within that.
    pub(crate) fn must_end(&self, now: Instant) -> bool {
        !self.kept_after(now) || self.version == 0 || self.deadline > now.later(self.linger)
    }

    /// Adds the end of the update at `now` to `patch`, conditional on the lease still being
    /// this holder's: the lease kept for `linger` from now, or released.
    pub(crate) fn end_in(&self, patch: &mut Patch<'_>, now: Instant) {
        let value = if self.kept_after(now) {
            encode(&self.holder, until(self.linger), true)
        } else {
            encode(&self.holder, 0, false)
        };
        patch.set.push((LEASE_FIELD, value));
        patch.expect.push((LEASE_FIELD, self.version));
    }

    /// The patch that [`end_in`](Self::end_in) added to at `sent` was applied: the lease is
    /// kept (if at all) until `linger` after that.
    pub(crate) fn ended(&mut self, sent: Instant) {
        self.version += 1;
        self.deadline = sent.later(self.linger);
    }
}

/// How one middleware holds leases: who it is, their term, and how long it keeps one after
/// an update for the next update of the key in this process (zero: released at once).
#[derive(Debug)]
pub(crate) struct Terms {
    pub(crate) holder: Arc<str>,
    pub(crate) term: Duration,
    pub(crate) linger: Duration,
}

/// The `until` of a lease that lasts `term` from now, in ms since the Unix epoch.
fn until(term: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(term.as_millis()).unwrap_or(i64::MAX))
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
        // Every third of the term; sooner for a lease kept from an earlier update that ends
        // before that.
        let every = match &*held.lock().await {
            Some(lease) => {
                (lease.ttl / 3).min(lease.deadline.saturating_duration_since(Instant::now()) / 2)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(linger: Duration, since: Instant, deadline: Instant) -> Lease {
        Lease {
            version: 3,
            deadline,
            ttl: Duration::from_secs(10),
            linger,
            since,
            holder: Arc::from("this process"),
        }
    }

    fn stored(patch: &Patch<'_>) -> (i64, bool, u64) {
        let (_, value) = patch
            .set
            .iter()
            .find(|(name, _)| *name == LEASE_FIELD)
            .expect("set");
        let stored: Stored<'_> = serde_json::from_str(value).expect("JSON");
        let expected = patch
            .expect
            .iter()
            .find(|(name, _)| *name == LEASE_FIELD)
            .expect("expected");
        (stored.until, stored.kept, expected.1)
    }

    #[test]
    fn without_linger_an_update_releases_its_lease() {
        let now = Instant::now();
        let lease = lease(Duration::ZERO, now, now.later(Duration::from_secs(10)));
        assert!(!lease.kept_after(now));
        assert!(lease.must_end(now));
        let mut patch = Patch::new();
        lease.end_in(&mut patch, now);
        assert_eq!(stored(&patch), (0, false, 3));
    }

    #[test]
    fn a_kept_lease_is_written_only_when_its_term_reaches_past_the_linger() {
        let linger = Duration::from_secs(1);
        let now = Instant::now();
        // Just claimed (or renewed): its term reaches past the linger, so the end shortens it.
        let claimed = lease(linger, now, now.later(Duration::from_secs(10)));
        assert!(claimed.kept_after(now) && claimed.must_end(now));
        let mut patch = Patch::new();
        claimed.end_in(&mut patch, now);
        let (until, kept, expected) = stored(&patch);
        assert!(kept && expected == 3);
        let left = until - now_ms();
        assert!(
            (0..=1_000).contains(&left),
            "kept for the linger: {left} ms"
        );
        // Kept from the last update and not renewed: it already ends within the linger.
        let kept = lease(linger, now, now.later(linger / 2));
        assert!(!kept.must_end(now));
        // A `clear()` deleted it with the record: it must be claimed again.
        let deleted = Lease { version: 0, ..kept };
        assert!(deleted.must_end(now));
    }

    #[test]
    fn a_lease_held_for_a_whole_term_is_released_at_the_end_of_the_next_update() {
        let linger = Duration::from_secs(1);
        let now = Instant::now();
        let held_long = lease(linger, now, now.later(linger));
        let later = now.later(held_long.ttl);
        assert!(!held_long.kept_after(later));
        assert!(held_long.must_end(later));
        let mut patch = Patch::new();
        held_long.end_in(&mut patch, later);
        assert_eq!(stored(&patch), (0, false, 3));
    }

    #[test]
    fn a_kept_lease_that_ran_out_is_no_take_over_and_an_older_record_reads_as_not_kept() {
        let kept = format!(
            r#"{{"holder":"another","until":{},"kept":true}}"#,
            now_ms() - 10
        );
        let crashed = format!(r#"{{"holder":"another","until":{}}}"#, now_ms() - 10);
        let read = |text: String| {
            let mut record = Record::default();
            record.fields.insert(LEASE_FIELD.to_owned(), text);
            observe(Some(&record), "this process")
        };
        let kept = read(kept);
        assert!(kept.held_for.is_none() && !kept.expired);
        let crashed = read(crashed);
        assert!(crashed.held_for.is_none() && crashed.expired);
    }
}
