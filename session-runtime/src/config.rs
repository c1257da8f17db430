//! The policies a [`SessionMiddleware`](crate::SessionMiddleware) is configured with.

/// What happens to an update's session writes when the chain returns an error (or panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Write them anyway, like Telegraf.
    #[default]
    Save,
    /// Take back this update's own writes (those no other update overwrote since). What other
    /// updates of the same key changed is still written.
    Discard,
}

/// What happens to an update's writes when its session cannot be saved (the store failed or
/// timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SaveFailurePolicy {
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

/// What an update reads of a session that this process kept decoded since an earlier update
/// of its key (ARCHITECTURE.md, "Decoded between updates").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Freshness {
    /// What the store holds when the update first uses the session: a session kept decoded
    /// is used only while the store says its record is still the one it decoded (the memory
    /// store and SQLite tell revisions); on every other store each update loads it. No update
    /// reads a value older than one another update was answered for.
    #[default]
    Checked,
    /// The session as this process last read or wrote it, on every store, with no load and no
    /// check (not even the revision SQLite tells): a writing update costs one round trip, its
    /// patch. Its writes expect the versions of every field it read, so an update that read a
    /// value another process has changed since is refused and runs again on the record the
    /// refusal carries: no write based on a stale read is committed. An update that only reads can see a value another process changed
    /// or erased since. Safe to read when one process handles each chat (polling, or replicas
    /// behind routing by chat). Sessions with a ttl are loaded as under `Checked` (the record
    /// may have expired).
    Cached,
}

/// What a stale `set_*` does: a write of a field that another update changed after this one
/// last read it (ARCHITECTURE.md, "Stale writes"). It is always counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StalePolicy {
    /// Refuse it: the write is not applied, the update's other unsaved writes are taken back,
    /// and it ends with [`SessionError::StaleWrite`](crate::SessionError::StaleWrite) and
    /// [`Context::must_retry`](crate::Context::must_retry), to run again on the newer value
    /// (the webhook has Telegram deliver it again; the poller runs it again). A
    /// read, `.await`, `set_*` sequence then never loses the other update's write.
    #[default]
    Retry,
    /// Let the write stand (the other update's write is lost).
    Warn,
    /// Also end the update with [`SessionError::StaleWrite`](crate::SessionError::StaleWrite),
    /// which the error policy then applies to.
    Error,
}

/// What renews a stored session's expiry (its `ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Renewal {
    /// Every write renews it: a session that is only read expires a `ttl` after its last
    /// write.
    #[default]
    OnWrite,
    /// Every use renews it, reads included: a session expires a `ttl` after it was last used.
    /// A read that writes nothing renews with a patch that changes no field; those renewals
    /// are coalesced, at most one per key per quarter of the `ttl` in each process, so a
    /// burst of reads costs at most one extra store write.
    OnAccess,
}

/// A setting of a [`SessionBuilder`](crate::SessionBuilder) beyond what it can mean, refused by
/// [`try_build`](crate::SessionBuilder::try_build) (and clamped, with a warning, by
/// [`build`](crate::SessionBuilder::build)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session {session}: {setting} of {value:?} is beyond the most it can be, {limit:?}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The session type.
    pub session: &'static str,
    /// The setting, as the builder method that sets it: `"exclusive"` (the wait),
    /// `"exclusive_across_processes"` (the lease), `"ttl"`.
    pub setting: &'static str,
    /// What it was given.
    pub value: std::time::Duration,
    /// The most it may be.
    pub limit: std::time::Duration,
}

/// The longest an update waits for its turn in exclusive mode, and the longest lease: a day.
/// Longer is taken for a mistake (`Duration::MAX` for "no limit"): an update that waits that
/// long was given up on by Telegram long before.
pub(crate) const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The longest expiry a store is asked for: ten years (every store can represent it, in
/// milliseconds since the epoch or as a deadline on its clock).
pub(crate) const MAX_TTL: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 60 * 60);
