//! [`Stats`]: the counters of one session middleware, and (feature `metrics`) the same events
//! through the `metrics` facade, labelled with the session type.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one session middleware, shared by its clones.
///
/// With the `metrics` feature, every count also goes to the `metrics` facade as
/// `typed_session_{name}_total{session="<type>"}`, and the load and save latencies as the
/// histograms `typed_session_load_seconds` and `typed_session_save_seconds` (the guide's
/// `observability` chapter lists them).
#[derive(Debug)]
pub struct Stats {
    session: &'static str,
    counts: [AtomicU64; Count::KINDS],
}

/// What [`Stats`] counts; the metric of each is `typed_session_{name}_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Loads,
    Writes,
    Deletes,
    BytesWritten,
    StaleWrites,
    LateAccesses,
    Conflicts,
    Redeliveries,
    LeaseTakeovers,
    LeasesLost,
    Renewals,
    FailedSaves,
    Deadlines,
}

impl Count {
    /// How many kinds of count there are (the last variant's index, plus one).
    const KINDS: usize = Count::Deadlines as usize + 1;

    #[cfg(feature = "metrics")]
    fn metric(self) -> &'static str {
        match self {
            Count::Loads => "typed_session_loads_total",
            Count::Writes => "typed_session_writes_total",
            Count::Deletes => "typed_session_deletes_total",
            Count::BytesWritten => "typed_session_bytes_written_total",
            Count::StaleWrites => "typed_session_stale_writes_total",
            Count::LateAccesses => "typed_session_late_accesses_total",
            Count::Conflicts => "typed_session_conflicts_total",
            Count::Redeliveries => "typed_session_redeliveries_total",
            Count::LeaseTakeovers => "typed_session_lease_takeovers_total",
            Count::LeasesLost => "typed_session_leases_lost_total",
            Count::Renewals => "typed_session_renewals_total",
            Count::FailedSaves => "typed_session_failed_saves_total",
            Count::Deadlines => "typed_session_deadlines_total",
        }
    }
}

/// When a timed load or save started; empty without the `metrics` feature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

/// A latency [`Stats`] records (feature `metrics`: a histogram, in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Latency {
    Load,
    Save,
}

impl Stats {
    pub(crate) fn new(session: &'static str) -> Self {
        Stats {
            session,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds `n` to `count`.
    pub(crate) fn add(&self, count: Count, n: u64) {
        self.counts[count as usize].fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(count.metric(), "session" => self.session).increment(n);
    }

    /// Starts timing a load or a save: reads the clock only when the latency is recorded.
    pub(crate) fn start(&self) -> Timer {
        Timer {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// Records how long a load or a save took since [`start`](Self::start).
    pub(crate) fn took(&self, latency: Latency, timer: Timer) {
        #[cfg(feature = "metrics")]
        {
            let name = match latency {
                Latency::Load => "typed_session_load_seconds",
                Latency::Save => "typed_session_save_seconds",
            };
            metrics::histogram!(name, "session" => self.session)
                .record(timer.started.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (latency, timer, self.session);
    }

    fn get(&self, count: Count) -> u64 {
        self.counts[count as usize].load(Ordering::Relaxed)
    }

    /// Records read from the store (one per burst of concurrent updates of a key).
    pub fn loads(&self) -> u64 {
        self.get(Count::Loads)
    }
    /// Patches written to the store that changed fields.
    pub fn writes(&self) -> u64 {
        self.get(Count::Writes)
    }
    /// Expiry renewals of sessions that were used and not written (under
    /// [`Renewal::OnAccess`](crate::Renewal::OnAccess)): patches that change no field.
    pub fn renewals(&self) -> u64 {
        self.get(Count::Renewals)
    }
    /// Records deleted by `clear()`.
    pub fn deletes(&self) -> u64 {
        self.get(Count::Deletes)
    }
    /// Bytes of field names and values written.
    pub fn bytes_written(&self) -> u64 {
        self.get(Count::BytesWritten)
    }
    /// Stale `set_*` calls detected.
    pub fn stale_writes(&self) -> u64 {
        self.get(Count::StaleWrites)
    }
    /// Patches the store refused because another writer had changed a field they wrote.
    pub fn conflicts(&self) -> u64 {
        self.get(Count::Conflicts)
    }
    /// Deliveries of an update whose writes were saved already: not applied again.
    pub fn redeliveries(&self) -> u64 {
        self.get(Count::Redeliveries)
    }
    /// In exclusive mode across processes: leases taken over from a holder that let them
    /// expire (a process that crashed, hung or was paused while it held the key).
    pub fn lease_takeovers(&self) -> u64 {
        self.get(Count::LeaseTakeovers)
    }
    /// In exclusive mode across processes: saves refused because this process's lease had run
    /// out or been taken over; nothing of them was written.
    pub fn leases_lost(&self) -> u64 {
        self.get(Count::LeasesLost)
    }
    /// Uses of a handle after its update was saved.
    pub fn late_accesses(&self) -> u64 {
        self.get(Count::LateAccesses)
    }
    /// Saves the store failed (an error or a deadline; conflicts are counted apart).
    pub fn failed_saves(&self) -> u64 {
        self.get(Count::FailedSaves)
    }
    /// Store calls (loads and saves) that got no answer within the store's deadline.
    pub fn deadlines(&self) -> u64 {
        self.get(Count::Deadlines)
    }
}
