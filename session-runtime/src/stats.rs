//! [`Stats`]: the counters of one session middleware.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one session middleware, shared by its clones.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) loads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) stale_writes: AtomicU64,
    pub(crate) late_accesses: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) redeliveries: AtomicU64,
    pub(crate) lease_takeovers: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) renewals: AtomicU64,
}

impl Stats {
    /// Records read from the store (one per burst of concurrent updates of a key).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
    /// Patches written to the store that changed fields.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Expiry renewals of sessions that were used and not written (under
    /// [`Renewal::OnAccess`](crate::Renewal::OnAccess)): patches that change no field.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }
    /// Records deleted by `clear()`.
    pub fn deletes(&self) -> u64 {
        self.deletes.load(Ordering::Relaxed)
    }
    /// Bytes of field names and values written.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
    /// Stale `set_*` calls detected.
    pub fn stale_writes(&self) -> u64 {
        self.stale_writes.load(Ordering::Relaxed)
    }
    /// Patches the store refused because another writer had changed a field they wrote.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
    /// Deliveries of an update whose writes were saved already: not applied again.
    pub fn redeliveries(&self) -> u64 {
        self.redeliveries.load(Ordering::Relaxed)
    }
    /// In exclusive mode across processes: leases taken over from a holder that let them
    /// expire (a process that crashed, hung or was paused while it held the key).
    pub fn lease_takeovers(&self) -> u64 {
        self.lease_takeovers.load(Ordering::Relaxed)
    }
    /// In exclusive mode across processes: saves refused because this process's lease had run
    /// out or been taken over; nothing of them was written.
    pub fn leases_lost(&self) -> u64 {
        self.leases_lost.load(Ordering::Relaxed)
    }
    /// Uses of a handle after its update was persisted.
    pub fn late_accesses(&self) -> u64 {
        self.late_accesses.load(Ordering::Relaxed)
    }
}
