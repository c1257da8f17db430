//! When stored sessions expire, and which reads renew them (ARCHITECTURE.md, "Expiry").
//!
//! Every write renews a record's expiry (it carries the term). Under
//! [`Renewal::OnAccess`], a use of a session that writes nothing renews it too, with a patch
//! that [only renews](crate::store::Patch::only_renews); those renewals are coalesced per key:
//! at most one per [`RENEWAL_FRACTION`] of the term, in this process, whatever the number of
//! reads. What was renewed when is kept only as long as it matters (one fraction of the
//! term), so the memory it takes is bounded by the keys read within that window.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::Renewal;

/// A read renews a key again once this part of the term has passed since its last renewal:
/// a session read without a break never comes within three quarters of the term of its end.
pub(crate) const RENEWAL_FRACTION: u32 = 4;

/// The term of one middleware's records, and how reads renew it.
pub(crate) struct Expiry {
    pub(crate) ttl: Option<Duration>,
    /// Under [`Renewal::OnAccess`] with a term: the keys renewed within the last fraction of
    /// it, and when.
    renewed: Option<Mutex<Renewed>>,
}

#[derive(Default)]
struct Renewed {
    at: HashMap<Box<str>, Instant>,
    /// The size after the last pruning: the map is pruned when it has doubled since.
    pruned_at: usize,
}

impl Renewed {
    /// Records `key` as renewed `now`; forgets the keys renewed more than `period` ago once
    /// the map has doubled since it last did, so it holds about the keys of one period.
    fn mark(&mut self, key: &str, now: Instant, period: std::time::Duration) {
        match self.at.get_mut(key) {
            Some(at) => *at = now,
            None => {
                self.at.insert(key.into(), now);
            }
        }
        if self.at.len() >= 2 * self.pruned_at.max(512) {
            self.at.retain(|_, at| now.duration_since(*at) < period);
            self.pruned_at = self.at.len();
        }
    }
}

impl Expiry {
    pub(crate) fn new(ttl: Option<Duration>, renewal: Renewal) -> Self {
        let renewed = (ttl.is_some() && renewal == Renewal::OnAccess).then(Mutex::default);
        Expiry { ttl, renewed }
    }

    pub(crate) fn renewal(&self) -> Renewal {
        if self.reads_renew() {
            Renewal::OnAccess
        } else {
            Renewal::OnWrite
        }
    }

    /// Whether reads renew at all (a term, under [`Renewal::OnAccess`]): the cheap test that
    /// spares everything else its work on the default configuration.
    pub(crate) fn reads_renew(&self) -> bool {
        self.renewed.is_some()
    }

    fn period(&self) -> Duration {
        self.ttl.unwrap_or_default() / RENEWAL_FRACTION
    }

    /// Whether a read of `key` should renew its expiry now; if so, it counts as renewed from
    /// now on (so that concurrent reads do not renew it again), until [`Expiry::failed`].
    pub(crate) fn claim_renewal(&self, key: &str) -> bool {
        let Some(renewed) = &self.renewed else {
            return false;
        };
        let now = Instant::now();
        let mut renewed = renewed.lock();
        if let Some(at) = renewed.at.get(key)
            && now.duration_since(*at) < self.period()
        {
            return false;
        }
        renewed.mark(key, now, self.period());
        true
    }

    /// A write of `key` carried the term: it counts as a renewal.
    pub(crate) fn written(&self, key: &str) {
        if let Some(renewed) = &self.renewed {
            renewed.lock().mark(key, Instant::now(), self.period());
        }
    }

    /// A renewal of `key` failed: the next read tries again.
    pub(crate) fn failed(&self, key: &str) {
        if let Some(renewed) = &self.renewed {
            renewed.lock().at.remove(key);
        }
    }

    /// How many keys are remembered as renewed (for tests of the bound).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.renewed.as_ref().map_or(0, |r| r.lock().at.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Expiry;
    use crate::config::Renewal;

    #[tokio::test(start_paused = true)]
    async fn a_key_is_renewed_once_per_quarter_of_the_term_and_forgotten_after() {
        let expiry = Expiry::new(Some(Duration::from_secs(40)), Renewal::OnAccess);
        assert!(expiry.claim_renewal("a"));
        assert!(!expiry.claim_renewal("a"), "coalesced");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!expiry.claim_renewal("a"), "within a quarter of the term");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(expiry.claim_renewal("a"), "a quarter has passed");
        expiry.failed("a");
        assert!(expiry.claim_renewal("a"), "a failed renewal is tried again");
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_renewed_is_kept_only_as_long_as_it_matters() {
        let expiry = Expiry::new(Some(Duration::from_secs(40)), Renewal::OnAccess);
        for n in 0..1000 {
            assert!(expiry.claim_renewal(&format!("old {n}")));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for n in 0..1100 {
            assert!(expiry.claim_renewal(&format!("new {n}")));
        }
        assert!(expiry.remembered() <= 1100, "{}", expiry.remembered());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_only_written_are_forgotten_too() {
        let expiry = Expiry::new(Some(Duration::from_secs(40)), Renewal::OnAccess);
        for n in 0..1000 {
            expiry.written(&format!("old {n}"));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for n in 0..1100 {
            expiry.written(&format!("new {n}"));
        }
        assert!(expiry.remembered() <= 1100, "{}", expiry.remembered());
    }

    #[test]
    fn without_a_term_or_on_write_reads_renew_nothing() {
        assert!(!Expiry::new(None, Renewal::OnAccess).claim_renewal("a"));
        assert!(!Expiry::new(Some(Duration::from_secs(1)), Renewal::OnWrite).claim_renewal("a"));
    }
}
