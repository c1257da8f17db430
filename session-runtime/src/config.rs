//! The policies a [`SessionMiddleware`](crate::SessionMiddleware) is configured with.

/// What happens to an update's session writes when the chain returns an error (or panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Write them anyway, like Telegraf.
    #[default]
    Persist,
    /// Take back this update's own writes (those no other update overwrote since). What other
    /// updates of the same key changed is still written.
    Discard,
}

/// What happens to an update's writes when its session cannot be saved (the store failed or
/// timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SaveFailure {
    /// Take back this update's own writes that were not saved, and fail it with
    /// [`Context::must_retry`](crate::Context::must_retry): whoever delivered it delivers it
    /// again, and it is applied once. Telegram redelivers what the webhook answered with an
    /// error status; the poller runs it again.
    #[default]
    Retry,
    /// Keep the writes in the live session, to be saved by the next update of the key or by
    /// a flush. For runners that never deliver an update twice (teloxide's dispatcher, which
    /// the dptree handlers of this crate always use this way).
    Keep,
}

/// What a stale `set_*` does: a write of a field that another update changed after this one
/// last read it (ARCHITECTURE.md, "Stale writes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StalePolicy {
    /// Count it and log a warning; the write stands.
    #[default]
    Warn,
    /// Also end the update with [`SessionError::StaleWrite`](crate::SessionError::StaleWrite),
    /// which the error policy then applies to.
    Error,
}
