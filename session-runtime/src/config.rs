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
