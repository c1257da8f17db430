//! Deadlines that never overflow: a wait of `Duration::MAX` (what a caller may give for "for
//! ever"), a `retry_after` a peer sent, or a term a user configured must not panic the task
//! that adds it to an `Instant` ("overflow when adding duration to instant").

use std::time::Duration;

/// A hundred years: as far as a deadline goes when the one asked for cannot be represented.
const FOR_EVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Adding a duration to an instant without overflow.
pub(crate) trait Later: Copy {
    /// `self + by`, or a hundred years on (or `self`, on a clock that cannot go that far)
    /// when that overflows.
    fn later(self, by: Duration) -> Self;
}

impl Later for std::time::Instant {
    fn later(self, by: Duration) -> Self {
        self.checked_add(by)
            .or_else(|| self.checked_add(FOR_EVER))
            .unwrap_or(self)
    }
}

impl Later for tokio::time::Instant {
    fn later(self, by: Duration) -> Self {
        self.checked_add(by)
            .or_else(|| self.checked_add(FOR_EVER))
            .unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use super::{FOR_EVER, Later};
    use std::time::{Duration, Instant};

    #[test]
    fn a_deadline_saturates_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(
            now.later(Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(now.later(Duration::MAX), now + FOR_EVER);
        let now = tokio::time::Instant::now();
        assert_eq!(now.later(Duration::MAX), now + FOR_EVER);
    }
}
