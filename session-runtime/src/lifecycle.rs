//! The per-update lifecycle of a session, the one way every adapter (the chain's middleware,
//! the tower layer, the teloxide handlers) touches sessions (ARCHITECTURE.md, "How
//! one update flows").
//!
//! An adapter [begins](Scope::begin) a [`Scope`] before its handlers run and hands them a
//! [`LazySession`] (or attaches it to the [`Context`]); the session is loaded on first use.
//! When the handlers are done, the adapter [ends](Scope::end) the scope with their outcome and
//! gets an [`Ended`] back: saved, the handlers' own error (as the value they returned), a
//! session rule they broke, or a save that failed. A scope dropped before it ended (the
//! update was cancelled or panicked) ends on a task of its own.

use std::fmt;
use std::sync::Arc;

use crate::config::{ErrorPolicy, StalePolicy};
use crate::context::Context;
use crate::error::{BoxError, SessionError};
use crate::inline_key::InlineKey;
use crate::live::SessionRef;
use crate::live::hold::{Hold, Slot, Writes};
use crate::live::sessions::Sessions;
use crate::session::Session;

/// Session `S` of one update, loaded on first [`get`](Self::get): what framework adapters hand
/// to handlers that need `'static` values (a request extension with the tower layer, a
/// dependency with the teloxide handlers).
///
/// Cloning it is cheap; every clone reaches the same session. Using it after the update was
/// saved returns [`SessionError::AfterSave`] and is counted as a late access
/// (ARCHITECTURE.md, "Late access").
pub struct LazySession<S: Session>(Arc<Slot<S>>);

impl<S: Session> Clone for LazySession<S> {
    fn clone(&self) -> Self {
        LazySession(Arc::clone(&self.0))
    }
}

impl<S: Session> fmt::Debug for LazySession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazySession")
            .field("session", &S::NAME)
            .field("key", &self.0.key)
            .finish()
    }
}

impl<S: Session> LazySession<S> {
    /// The session, loaded on first use. The handle is `'static`; using it after the update
    /// was saved is detected and reported.
    ///
    /// # Errors
    ///
    /// As [`Context::session_of`].
    pub async fn get(&self) -> Result<S::Handle<'static>, SessionError> {
        Ok(S::new_handle(SessionRef::of(Arc::clone(&self.0)).await?))
    }
}

impl<U> Context<U> {
    /// The session `S` of this update, loaded on first use (the derive's `ctx.session()`
    /// calls this).
    ///
    /// # Errors
    ///
    /// [`SessionError::NotAttached`] when no middleware for `S` ran before this point,
    /// [`SessionError::NoKey`] when the update has no key, [`SessionError::AfterSave`] when
    /// the middleware has already saved it, and the load errors of the store.
    pub async fn session_of<S: Session>(&self) -> Result<S::Handle<'_>, SessionError> {
        Ok(S::new_handle(self.session_ref::<S>().await?))
    }

    /// Like [`Context::session_of`], but the handle does not borrow the context, for framework
    /// adapters that need `'static` values. Using it after the update was saved is
    /// detected and reported (ARCHITECTURE.md, "Late access").
    pub async fn session_owned<S: Session>(&self) -> Result<S::Handle<'static>, SessionError> {
        Ok(S::new_handle(self.session_ref::<S>().await?))
    }

    async fn session_ref<'a, S: Session>(&self) -> Result<SessionRef<'a, S>, SessionError> {
        let slot = self
            .attached::<Slot<S>>()
            .ok_or(SessionError::NotAttached { session: S::NAME })?;
        let session = SessionRef::of(slot).await;
        if let Err(SessionError::NoKey { .. }) = &session {
            self.mark_keyless();
        }
        session
    }
}

/// How an update's session scope ended; `E` is the handlers' own error, kept as the value
/// they returned.
#[must_use]
#[derive(Debug)]
pub(crate) enum Ended<E> {
    /// The handlers succeeded, and what they changed is saved (or there was nothing to save).
    Saved,
    /// The handlers failed; the error policy was applied and the session saved.
    Failed(E),
    /// The session is saved, but the update broke a session rule (a stale write under
    /// [`StalePolicy::Error`]); the error policy was applied to it as to a failure.
    Refused(SessionError),
    /// The session could not be saved. It stays live, dirty fields and all, and is written by
    /// the next update of its key or by a flush. `handlers` is their own error, if they failed.
    Unsaved {
        error: SessionError,
        handlers: Option<E>,
    },
    /// This update's writes are not in the store and were taken back: its save failed (under
    /// [`SaveFailurePolicy::Retry`](crate::SaveFailurePolicy::Retry)), or another writer had
    /// changed those fields since the session was read (a [`SessionError::Conflict`]; the
    /// session now holds the newer values). The update must run again to be applied, once.
    /// `handlers` is their own error, if any.
    Retry {
        error: SessionError,
        handlers: Option<E>,
    },
}

impl<E> Ended<E> {
    /// What the handlers returned, when no session was used.
    fn untouched(outcome: Result<(), E>) -> Self {
        match outcome {
            Ok(()) => Ended::Saved,
            Err(error) => Ended::Failed(error),
        }
    }

    pub(crate) fn is_unsaved(&self) -> bool {
        matches!(self, Ended::Unsaved { .. })
    }

    pub(crate) fn must_retry(&self) -> bool {
        matches!(self, Ended::Retry { .. })
    }
}

impl Ended<BoxError> {
    /// The chain's result: the handlers' error, the session's, or both in one
    /// [`SessionError::Save`] (neither hides the other).
    pub(crate) fn into_result(self, session: &'static str) -> Result<(), BoxError> {
        match self {
            Ended::Saved => Ok(()),
            Ended::Failed(error) => Err(error),
            Ended::Refused(error) => Err(error.into()),
            Ended::Unsaved { error, handlers } | Ended::Retry { error, handlers } => {
                Err(match (error, handlers) {
                    (error, None) => error.into(),
                    (
                        SessionError::Save {
                            session,
                            key,
                            source,
                            chain: None,
                        },
                        Some(handlers),
                    ) => SessionError::Save {
                        session,
                        key,
                        source,
                        chain: Some(handlers),
                    }
                    .into(),
                    (other, Some(handlers)) => {
                        tracing::error!(session, error = %handlers, "the chain failed, and then its session could not be saved");
                        other.into()
                    }
                })
            }
        }
    }
}

/// One update's scope of session `S`, from before its handlers run to after they are done.
/// End it with [`end`](Self::end); dropped without that (the update was cancelled, or is
/// unwinding from a panic), it ends on a task of its own, as a failed update.
#[must_use = "a scope persists the session when it ends; end it with Scope::end"]
pub(crate) struct Scope<S: Session> {
    slot: Arc<Slot<S>>,
    /// Not ended yet: a drop ends it.
    open: bool,
}

impl<S: Session> Scope<S> {
    /// Begins the scope of the update whose key is `key` (`None`: it has none).
    pub(crate) fn begin(
        sessions: &Arc<Sessions<S>>,
        key: Option<InlineKey>,
        update_id: Option<i64>,
    ) -> Self {
        Scope {
            slot: Arc::new(Slot::new(sessions, key, update_id)),
            open: true,
        }
    }

    /// For runners that never deliver an update twice (teloxide's dispatcher): nothing of
    /// the update is taken back to have it run again, whatever the middleware's policies. A
    /// failed save keeps its writes for a flush, and a stale write stands (and is counted).
    #[cfg_attr(not(feature = "teloxide"), allow(dead_code))]
    pub(crate) fn run_once(mut self) -> Self {
        if let Some(slot) = Arc::get_mut(&mut self.slot) {
            slot.run_once();
        }
        self
    }

    /// The session of this scope, for handlers that need a `'static` value.
    #[cfg_attr(not(any(feature = "tower", feature = "teloxide")), allow(dead_code))]
    pub(crate) fn lazy(&self) -> LazySession<S> {
        LazySession(Arc::clone(&self.slot))
    }

    /// Attaches the session to `ctx`, where `ctx.session()` finds it.
    pub(crate) fn attach_to<U>(&self, ctx: &Context<U>) {
        ctx.attach(Arc::clone(&self.slot));
    }

    /// Ends the scope with the handlers' outcome: applies the error policy, saves what
    /// changed as one patch, and releases the live session.
    pub(crate) async fn end<E>(mut self, outcome: Result<(), E>) -> Ended<E> {
        self.open = false;
        let Some(hold) = self.slot.end() else {
            return Ended::untouched(outcome);
        };
        match (close(hold, outcome.is_err()).await, outcome) {
            (Closed::Saved, outcome) => Ended::untouched(outcome),
            (Closed::Refused(error), _) => Ended::Refused(error),
            (Closed::Unsaved(error), outcome) => Ended::Unsaved {
                error,
                handlers: outcome.err(),
            },
            (Closed::Retry(error), outcome) => Ended::Retry {
                error,
                handlers: outcome.err(),
            },
        }
    }
}

impl<S: Session> Drop for Scope<S> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let Some(hold) = self.slot.end() else {
            return;
        };
        let how = if std::thread::panicking() {
            "panicking"
        } else {
            "cancelled"
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let slot = Arc::clone(&self.slot);
                runtime.spawn(async move {
                    // The hold `end` handed out, reached again from the task's own `Arc`.
                    let Some(hold) = slot.made() else { return };
                    let key = hold.entry.key.clone();
                    if let Closed::Unsaved(error) | Closed::Retry(error) = close(hold, true).await {
                        tracing::error!(session = S::NAME, key = &*key, how, %error, "the session of an interrupted update is not saved");
                    }
                });
            }
            Err(_) => {
                // No runtime to persist on: keep the changes live, as after a failed persist,
                // for the next update of the key or a flush.
                let unsaved = hold.entry.lock().has_changes();
                tracing::error!(
                    session = S::NAME,
                    key = &*hold.entry.key,
                    unsaved,
                    "update {how} outside a tokio runtime; its session is written by the next update of its key or a flush"
                );
                hold.release(unsaved);
            }
        }
    }
}

impl<S: Session> fmt::Debug for Scope<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("session", &S::NAME)
            .field("key", &self.slot.key)
            .finish()
    }
}

/// How many times an update whose own writes are still pending after a conflict on other
/// fields writes them again before it is told the conflict.
const CONFLICT_RETRIES: usize = 3;

enum Closed {
    Saved,
    Refused(SessionError),
    Unsaved(SessionError),
    Retry(SessionError),
}

/// Applies the error policy to the update behind `hold`, saves, and releases the hold. A
/// save that fails takes back the update's unsaved writes (unless its runner never retries,
/// or the middleware keeps them), so that the update, delivered again, is applied once.
async fn close<S: Session>(hold: &Hold<S>, failed: bool) -> Closed {
    // Errors are built where they are returned: only what they are made of is kept across
    // the awaits below (this future is part of every update's).
    let stale_write = |field| SessionError::StaleWrite {
        session: S::NAME,
        key: hold.entry.session_key(),
        field,
    };
    let sessions = &hold.sessions;
    let stale = hold.stale_field();
    if sessions.stale == StalePolicy::Retry
        && let Some(stale) = stale
    {
        // The stale write was never applied; the others of this update are taken back too,
        // so that it runs again whole, on the newer value. (A hold records a stale write only
        // where its update can run again, or under `StalePolicy::Error`.)
        hold.take_back();
        let persisted = hold.persist().await;
        hold.release(persisted.is_err() && hold.entry.lock().has_changes());
        return Closed::Retry(stale_write(stale));
    }
    // Under `StalePolicy::Error` the stale write is saved, and the update fails for it.
    let refused = stale.filter(|_| !failed);
    if (failed || refused.is_some()) && sessions.on_error == ErrorPolicy::Discard {
        hold.revert(false);
    }
    let mut persisted = hold.persist().await;
    // A conflict on fields this update did not write leaves its own writes pending, to be
    // written on the refreshed session: write them now, so that the update learns their fate.
    for _ in 0..CONFLICT_RETRIES {
        let conflict = matches!(persisted, Err(SessionError::Conflict { .. }));
        if !conflict || hold.writes() != Writes::Pending {
            break;
        }
        persisted = hold.persist().await;
    }
    // The update is told what became of its own writes (ARCHITECTURE.md, "Exactly once"):
    // the persist it ran also carries other updates' writes, and may fail for theirs after
    // its own were saved by an earlier patch.
    let writes = hold.writes();
    // Whether the entry may be left with writes no update will save (kept for a flush).
    let unsaved = persisted.is_err();
    // A redelivery recognised as saved wrote nothing: it is saved, whatever the persist of
    // other updates' writes it ran met (run again, it might no longer be recognised).
    let saved = writes == Writes::Saved || (writes == Writes::None && hold.is_replay());
    if saved && let Err(error) = &persisted {
        tracing::debug!(session = S::NAME, key = &*hold.entry.key, %error, "this update's writes were saved by an earlier patch; the failed one carried other updates' writes");
        persisted = Ok(());
    }
    // Where a read does not prove a write as safe as an acknowledgement, a redelivery found
    // saved by reading is acknowledged only once a write of its own to the record succeeds
    // (`Store::reads_are_durable`); until then it runs again, and is found saved again.
    let unconfirmed = if writes == Writes::None && hold.is_replay() {
        Box::pin(hold.entry.confirm(&*sessions.store)).await.0.err()
    } else {
        None
    };
    let take_back = match &persisted {
        Ok(()) | Err(SessionError::Conflict { .. }) => false,
        Err(_) => hold.takes_back(),
    };
    if take_back {
        hold.take_back();
    }
    // What is still dirty (kept writes, other updates' writes) has to be written later.
    hold.release(unsaved && hold.entry.lock().has_changes());
    if let Some(source) = unconfirmed {
        return Closed::Retry(SessionError::Save {
            session: S::NAME,
            key: hold.entry.session_key(),
            source: Box::new(source),
            chain: None,
        });
    }
    if let Writes::Discarded { fields, sure } = writes {
        // Taken back: the update runs again. A conflict says the store holds none of it; a
        // failed save says it may (then its redelivery is recognised by its id).
        return Closed::Retry(match persisted {
            Err(error @ SessionError::Save { .. }) if !sure => error,
            _ if !sure => SessionError::Save {
                session: S::NAME,
                key: hold.entry.session_key(),
                source: Box::new(hold.entry.failed_save()),
                chain: None,
            },
            _ => SessionError::Conflict {
                session: S::NAME,
                key: hold.entry.session_key(),
                fields,
            },
        });
    }
    if take_back && let Err(error) = persisted {
        return Closed::Retry(error);
    }
    match (persisted, refused.map(stale_write)) {
        (Ok(()), None) => Closed::Saved,
        (Ok(()), Some(refused)) => Closed::Refused(refused),
        (
            Err(SessionError::Save {
                session,
                key,
                source,
                chain: None,
            }),
            Some(refused),
        ) => Closed::Unsaved(SessionError::Save {
            session,
            key,
            source,
            chain: Some(refused.into()),
        }),
        (Err(error), _) => Closed::Unsaved(error),
    }
}
