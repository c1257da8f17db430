//! A Telegraf-style middleware chain: each middleware gets the context and `next`, and decides
//! whether and when the rest of the chain runs.

use std::sync::Arc;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::context::Context;
use crate::error::BoxError;

/// What a middleware returns: a boxed future of the rest of the chain's outcome.
pub type ChainFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// One step of a [`Chain`].
///
/// Closures are added with [`Chain::with_fn`] and [`Chain::handler`]; implement this trait for
/// middlewares with state of their own, as [`SessionMiddleware`](crate::SessionMiddleware) does.
pub trait Middleware<U>: Send + Sync + 'static {
    /// Handles `ctx`; calls `next.run(ctx)` to run the rest of the chain.
    fn call<'a>(&'a self, ctx: &'a Context<U>, next: Next<'a, U>) -> ChainFuture<'a>;

    /// Writes what this middleware still holds for updates that are over: called by
    /// [`Chain::flush`]. The default holds nothing.
    fn flush(&self) -> ChainFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The rest of the chain after the current middleware.
pub struct Next<'a, U> {
    rest: &'a [Arc<dyn Middleware<U>>],
}

impl<'a, U: 'static> Next<'a, U> {
    /// Runs the rest of the chain on `ctx`.
    pub fn run(self, ctx: &'a Context<U>) -> ChainFuture<'a> {
        match self.rest.split_first() {
            Some((first, rest)) => first.call(ctx, Next { rest }),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }
}

/// A middleware made of a closure, see [`Chain::with_fn`].
struct FnMiddleware<F>(F);

impl<U, F> Middleware<U> for FnMiddleware<F>
where
    U: 'static,
    F: for<'a> Fn(&'a Context<U>, Next<'a, U>) -> ChainFuture<'a> + Send + Sync + 'static,
{
    fn call<'a>(&'a self, ctx: &'a Context<U>, next: Next<'a, U>) -> ChainFuture<'a> {
        (self.0)(ctx, next)
    }
}

/// A final handler made of a closure, see [`Chain::handler`].
struct Handler<F>(F);

impl<U, F> Middleware<U> for Handler<F>
where
    U: 'static,
    F: for<'a> Fn(&'a Context<U>) -> ChainFuture<'a> + Send + Sync + 'static,
{
    fn call<'a>(&'a self, ctx: &'a Context<U>, _next: Next<'a, U>) -> ChainFuture<'a> {
        (self.0)(ctx)
    }
}

/// An ordered list of middlewares run for each update (Telegraf's `bot.use`).
///
/// # Example
///
/// ```
/// use typed_session::Chain;
/// use typed_session::telegram::Update;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let chain = Chain::<Update>::new()
///     .with_fn(|ctx, next| Box::pin(async move {
///         println!("before update {}", ctx.update().update_id);
///         next.run(ctx).await
///     }))
///     .handler(|ctx| Box::pin(async move {
///         assert_eq!(ctx.update().text_of(), Some("hi"));
///         Ok(())
///     }));
/// chain.run_update(Update::text(1, 7, 7, "hi")).await?;
/// # Ok::<(), typed_session::BoxError>(())
/// # }).unwrap();
/// ```
pub struct Chain<U> {
    middlewares: Vec<Arc<dyn Middleware<U>>>,
}

impl<U> fmt::Debug for Chain<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("middlewares", &self.middlewares.len())
            .finish()
    }
}

impl<U> fmt::Debug for Next<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("rest", &self.rest.len())
            .finish()
    }
}

impl<U> Clone for Chain<U> {
    fn clone(&self) -> Self {
        Chain {
            middlewares: self.middlewares.clone(),
        }
    }
}

impl<U: Send + Sync + 'static> Default for Chain<U> {
    fn default() -> Self {
        Self::new()
    }
}

impl<U: Send + Sync + 'static> Chain<U> {
    /// An empty chain.
    pub fn new() -> Self {
        Chain {
            middlewares: Vec::new(),
        }
    }

    /// Appends a middleware.
    pub fn with(mut self, middleware: impl Middleware<U>) -> Self {
        self.middlewares.push(Arc::new(middleware));
        self
    }

    /// Appends a middleware written as a closure `|ctx, next| Box::pin(async move { .. })`.
    pub fn with_fn<F>(self, f: F) -> Self
    where
        F: for<'a> Fn(&'a Context<U>, Next<'a, U>) -> ChainFuture<'a> + Send + Sync + 'static,
    {
        self.with(FnMiddleware(f))
    }

    /// Appends a final handler written as a closure `|ctx| Box::pin(async move { .. })`; what
    /// comes after it never runs.
    pub fn handler<F>(self, f: F) -> Self
    where
        F: for<'a> Fn(&'a Context<U>) -> ChainFuture<'a> + Send + Sync + 'static,
    {
        self.with(Handler(f))
    }

    /// Runs the chain for one update. When the returned future completes, every session
    /// middleware in the chain has saved its session.
    pub async fn run_update(&self, update: U) -> Result<(), BoxError> {
        let ctx = Context::new(update);
        self.run(&ctx).await
    }

    /// Runs the chain on a context the caller built (to read it afterwards).
    pub fn run<'a>(&'a self, ctx: &'a Context<U>) -> ChainFuture<'a> {
        Next {
            rest: &self.middlewares,
        }
        .run(ctx)
    }

    /// Waits until no update of this chain holds a session (saves running on tasks of their
    /// own after a panic or a cancelled update included), then writes every session whose
    /// save failed. `Ok` means nothing the chain handled is left unsaved; the error is the
    /// first middleware's that still has something unsaved. For pollers, and for shutdown.
    ///
    /// ```
    /// use typed_session::telegram::Update;
    /// use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};
    ///
    /// #[derive(Session)]
    /// struct Visits {
    ///     count: u64,
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let chain = Chain::new()
    ///     .with(SessionMiddleware::<Visits, Update>::new(MemoryStore::new()))
    ///     .handler(|ctx| Box::pin(async move {
    ///         ctx.session().await?.update_count(|c| *c += 1);
    ///         Ok(())
    ///     }));
    /// chain.run_update(Update::text(1, 7, 7, "hi")).await?;
    /// // On shutdown: nothing this chain handled is left unsaved once this is `Ok`.
    /// chain.flush().await?;
    /// # Ok::<(), typed_session::BoxError>(())
    /// # }).unwrap();
    /// ```
    pub async fn flush(&self) -> Result<(), BoxError> {
        let mut first = None;
        for middleware in &self.middlewares {
            if let Err(error) = middleware.flush().await {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The number of middlewares.
    pub fn len(&self) -> usize {
        self.middlewares.len()
    }

    /// Whether the chain has no middleware.
    pub fn is_empty(&self) -> bool {
        self.middlewares.is_empty()
    }
}
