//! Sessions for teloxide bots: dptree handlers that attach a session before the handlers and
//! save it after them (feature `teloxide`).
//!
//! [`SessionMiddleware::attach`] is the one line a teloxide bot adds: it gives every handler
//! after it a [`LazySession<S>`] dependency, and when the handlers are done (whichever branch
//! took the update, or none), it saves the fields they changed, as one patch, before the
//! dispatcher moves on. [`SessionMiddleware::load`] goes one step further for the branches
//! that use the session: it loads it and hands the handlers the typed handle itself.
//!
//! Handlers keep teloxide's own signatures: `ResponseResult<()>`, a boxed error, `anyhow`, or
//! an error type of yours. A session error reaches the dispatcher's error handler as that
//! type: the handlers' error type `E` needs `From<SessionError>`, which `Box<dyn Error + Send +
//! Sync>` and `anyhow::Error` have, and which this crate gives teloxide's `RequestError`
//! (as its `Io` variant; [`session_error`] finds it again).
//!
//! ```
//! use typed_session::teloxide_core::prelude::*;
//! use typed_session::teloxide_core::types::{Message, Update};
//! use typed_session::teloxide_core::RequestError;
//! use typed_session::{MemoryStore, Session, SessionMiddleware};
//! use typed_session::dptree::{self, Handler};
//!
//! #[derive(Session)]
//! struct Visits {
//!     count: u64,
//! }
//!
//! async fn count(bot: Bot, message: Message, visits: VisitsHandle<'static>) -> Result<(), RequestError> {
//!     let count = visits.update_count(|c| { *c += 1; *c });
//!     bot.send_message(message.chat.id, format!("message {count}")).await?;
//!     Ok(())
//! }
//!
//! let sessions = SessionMiddleware::<Visits, Update>::new(MemoryStore::new());
//! let handler: Handler<'static, Result<(), RequestError>> = dptree::entry()
//!     .chain(sessions.attach())
//!     .branch(
//!         dptree::filter_map(|update: Update| match update.kind {
//!             typed_session::teloxide_core::types::UpdateKind::Message(m) => Some(m),
//!             _ => None,
//!         })
//!         .chain(sessions.load())
//!         .endpoint(count),
//!     );
//! // With teloxide: `Dispatcher::builder(bot, handler)`, where the update filters are
//! // `Update::filter_message()` and friends.
//! # let _ = handler;
//! ```
//!
//! # A dialogue: state in an enum field, routed with `dptree::case!`
//!
//! A session field of an enum type is a teloxide-style dialogue state, kept per user and chat
//! beside the other fields (and saved, field-level, with them). Map the handle to the state
//! and route on it:
//!
//! ```
//! # use typed_session::dptree::{self, Handler};
//! # use typed_session::teloxide_core::types::Update;
//! # use typed_session::teloxide_core::RequestError;
//! # use typed_session::{MemoryStore, Session, SessionMiddleware};
//! #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
//! enum Step {
//!     #[default]
//!     Start,
//!     AskAge { name: String },
//! }
//!
//! #[derive(Session)]
//! struct Signup {
//!     step: Step,
//! }
//!
//! async fn start(signup: SignupHandle<'static>) -> Result<(), RequestError> {
//!     signup.set_step(Step::AskAge { name: "Ada".into() });
//!     Ok(())
//! }
//!
//! async fn ask_age(name: String) -> Result<(), RequestError> {
//! #   let _ = name;
//!     Ok(())
//! }
//!
//! let sessions = SessionMiddleware::<Signup, Update>::new(MemoryStore::new());
//! let dialogue: Handler<'static, Result<(), RequestError>> = dptree::entry()
//!     .chain(sessions.attach())
//!     .chain(sessions.load())
//!     .map(|signup: SignupHandle<'static>| signup.step())
//!     .branch(dptree::case![Step::Start].endpoint(start))
//!     .branch(dptree::case![Step::AskAge { name }].endpoint(ask_age));
//! # let _ = dialogue;
//! ```
//!
//! A handler moves the dialogue on with `signup.set_step(Step::AskAge { name })`; the
//! repository's `teloxide-bot/examples/teloxide_dialogue.rs` is a whole one, tested inside a
//! real `Dispatcher`.
//!
//! A handle a handler keeps after it returned (moved into a spawned task, say) is over: using
//! it is reported as a late access ([`Stats::late_accesses`](crate::Stats::late_accesses) and
//! an error log), and what it writes is not saved by its update;
//! [`LazySession::get`] then returns [`SessionError::AfterSave`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::panic::Location;
use std::sync::Arc;

use dptree::di::DependencyMap;
use dptree::{HandlerDescription, HandlerSignature, Type};
use teloxide_core::RequestError;
use teloxide_core::types::Update;

use crate::error::SessionError;
use crate::lifecycle::{Ended, LazySession};
use crate::middleware::SessionMiddleware;
use crate::session::Session;

/// A handler that gives the handlers chained after it session `S` of the update, as a
/// [`LazySession<S>`] dependency (loaded on first use, so a branch that never uses it costs no
/// store I/O), and saves it once they are done.
///
/// The handlers' `Err` counts as a failure for the middleware's
/// [`ErrorPolicy`](crate::ErrorPolicy) and is handed on as the value they returned. A session
/// that cannot be saved turns a successful outcome into `Err(E::from(error))`, which the
/// dispatcher's error handler logs (when the handlers had failed already, their error is handed
/// on and the session error is logged); the changes stay live and are written by the next
/// update of the key or by [`SessionMiddleware::flush`]. A stale write under
/// [`StalePolicy::Error`](crate::StalePolicy::Error) is saved, and its
/// [`SessionError::StaleWrite`] becomes the outcome.
///
/// The handlers' error type `E` takes session errors through `From<SessionError>` (see the
/// [module docs](self)). [`SessionMiddleware::attach`] is the same, without naming `S`.
#[track_caller]
pub fn attach<S, E, D>(
    middleware: SessionMiddleware<S, Update>,
) -> dptree::Handler<'static, Result<(), E>, D>
where
    S: Session,
    E: From<SessionError> + Send + Sync + 'static,
    D: HandlerDescription,
{
    let middleware = Arc::new(middleware);
    dptree::from_fn_with_description(
        // Transparent to the update kinds: a dispatcher asks Telegram for what the
        // filters after it want, not for every kind.
        D::entry(),
        move |deps: DependencyMap, next| {
            let middleware = Arc::clone(&middleware);
            async move {
                let update = deps.try_get::<Update>();
                // A dispatcher never delivers an update twice: nothing is taken back to run it
                // again (a failed save keeps its writes for the next update of the key or a
                // flush; a stale write stands and is counted).
                let scope = middleware.begin(update.as_deref()).run_once();
                let mut inner = deps.clone();
                inner.insert(scope.lazy());
                let (flow, outcome) = match next(inner).await {
                    ControlFlow::Break(Err(error)) => (None, Err(error)),
                    flow => (Some(flow), Ok(())),
                };
                match scope.end(outcome).await {
                    Ended::Saved => restore(flow, deps),
                    Ended::Failed(error) => ControlFlow::Break(Err(error)),
                    Ended::Refused(error)
                    | Ended::Retry {
                        error,
                        handlers: None,
                    } => ControlFlow::Break(Err(E::from(error))),
                    Ended::Retry {
                        error,
                        handlers: Some(handlers),
                    } => {
                        tracing::error!(%error, "the handlers failed, and then their writes were refused");
                        ControlFlow::Break(Err(handlers))
                    }
                    Ended::Unsaved {
                        error,
                        handlers: None,
                    } => ControlFlow::Break(Err(E::from(error))),
                    Ended::Unsaved {
                        error,
                        handlers: Some(handlers),
                    } => {
                        tracing::error!(%error, "the handlers failed, and then their session could not be saved");
                        ControlFlow::Break(Err(handlers))
                    }
                }
            }
        },
        signature::<Update, LazySession<S>>(Location::caller()),
    )
}

/// A handler that loads session `S` (attached before it by [`attach`]) and gives the handlers
/// chained after it the typed handle, `S::Handle<'static>` (for `#[derive(Session)] struct
/// Visits`, that is `VisitsHandle<'static>`).
///
/// An update with no key, or a load that fails, ends the branch with `Err(E::from(error))`:
/// put it on the branches that need the session, after the filters that pick their updates.
/// [`SessionMiddleware::load`] is the same, without naming `S`, `E` and `D`.
#[track_caller]
pub fn load<S, E, D>() -> dptree::Handler<'static, Result<(), E>, D>
where
    S: Session,
    for<'a> S::Handle<'a>: Clone + Send + Sync,
    E: From<SessionError> + Send + Sync + 'static,
    D: HandlerDescription,
{
    dptree::from_fn_with_description(
        // Transparent to the update kinds: a dispatcher asks Telegram for what the
        // filters after it want, not for every kind.
        D::entry(),
        move |deps: DependencyMap, next| async move {
            let Some(session) = deps.try_get::<LazySession<S>>() else {
                let error = SessionError::NotAttached { session: S::NAME };
                return ControlFlow::Break(Err(E::from(error)));
            };
            match session.get().await {
                Ok(handle) => {
                    let mut inner = deps.clone();
                    inner.insert(handle);
                    restore(Some(next(inner).await), deps)
                }
                Err(error) => ControlFlow::Break(Err(E::from(error))),
            }
        },
        signature::<LazySession<S>, S::Handle<'static>>(Location::caller()),
    )
}

impl<S: Session> SessionMiddleware<S, Update> {
    /// A dptree handler that gives the handlers chained after it this session, as a
    /// [`LazySession<S>`] dependency, and saves it once they are done: [`attach`] for this
    /// middleware. Chain it first, before the branches.
    #[track_caller]
    pub fn attach<E, D>(&self) -> dptree::Handler<'static, Result<(), E>, D>
    where
        E: From<SessionError> + Send + Sync + 'static,
        D: HandlerDescription,
    {
        attach(self.clone())
    }

    /// A dptree handler that loads this session and gives the handlers chained after it the
    /// typed handle (`VisitsHandle<'static>` for `struct Visits`): [`load`] for this
    /// middleware's session type. Chain it on the branches that use the session, after
    /// [`attach`](Self::attach).
    #[track_caller]
    pub fn load<E, D>(&self) -> dptree::Handler<'static, Result<(), E>, D>
    where
        for<'a> S::Handle<'a>: Clone + Send + Sync,
        E: From<SessionError> + Send + Sync + 'static,
        D: HandlerDescription,
    {
        load::<S, E, D>()
    }
}

/// A session error as a teloxide [`RequestError`]: its `Io` variant, with the session error
/// inside (find it again with [`session_error`]). It lets handlers that return teloxide's
/// `ResponseResult<()>` use sessions unchanged.
impl From<SessionError> for RequestError {
    fn from(error: SessionError) -> Self {
        RequestError::Io(Arc::new(std::io::Error::other(error)))
    }
}

/// The [`SessionError`] inside an error a dispatcher's error handler got, if it is one: a
/// `RequestError` made from it, or a boxed one.
pub fn session_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a SessionError> {
    if let Some(found) = error.downcast_ref::<SessionError>() {
        return Some(found);
    }
    match error.downcast_ref::<RequestError>() {
        Some(RequestError::Io(io)) => io.get_ref()?.downcast_ref::<SessionError>(),
        _ => None,
    }
}

/// Hands the caller's dependencies back when no handler took the update, so the branches that
/// come next do not see a session that is already saved. `None` is a flow that `attach`
/// took the handlers' error out of, and `Ended` handed back.
fn restore<T>(
    flow: Option<ControlFlow<T, DependencyMap>>,
    deps: DependencyMap,
) -> ControlFlow<T, DependencyMap> {
    match flow {
        None | Some(ControlFlow::Continue(_)) => ControlFlow::Continue(deps),
        Some(done) => done,
    }
}

/// A handler that needs `In` and provides `Out`.
fn signature<In: 'static, Out: 'static>(at: &'static Location<'static>) -> HandlerSignature {
    HandlerSignature::Other {
        obligations: BTreeMap::from([(Type::of::<In>(), at)]),
        guaranteed_outcomes: BTreeSet::from([Type::of::<Out>()]),
        conditional_outcomes: BTreeSet::new(),
        continues: true,
    }
}
