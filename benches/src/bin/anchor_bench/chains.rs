//! The sessions and chains measured, and a store wrapper that counts calls and bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use typed_session::store::{Patch, Record, Revision, StoreFuture};
use typed_session::telegram::Update;
use typed_session::{Chain, Session, SessionBuilder, SessionMiddleware, Store, StoreError};

#[derive(Session)]
pub(crate) struct Count {
    #[default(0)]
    count: u64,
}

pub(crate) static SINK: AtomicU64 = AtomicU64::new(0);

pub(crate) fn count_chain(store: Arc<dyn Store>) -> Chain<Update> {
    count_chain_with(store, |builder| builder)
}

/// The counting chain on `store`, its middleware set up by `configure`.
pub(crate) fn count_chain_with(
    store: Arc<dyn Store>,
    configure: impl FnOnce(SessionBuilder<Count, Update>) -> SessionBuilder<Count, Update>,
) -> Chain<Update> {
    Chain::new()
        .with(configure(SessionMiddleware::<Count, Update>::builder(store)).build())
        .with_fn(|ctx, next| {
            Box::pin(async move {
                ctx.session().await?.update_count(|c| *c += 1);
                next.run(ctx).await
            })
        })
        .handler(|ctx| {
            Box::pin(async move {
                SINK.fetch_add(ctx.session().await?.count(), Ordering::Relaxed);
                Ok(())
            })
        })
}

/// The counting chain with one shared counter for a session, as the Node anchors' baseline is
/// their session chain with `ctx.session` pointed at one shared object. The steps after the
/// first reach it through an `.await`, as they reach a session, so the chain has the session
/// chain's shape (a boxed future per step): the difference between the two is the session.
pub(crate) fn baseline_chain() -> Chain<Update> {
    Chain::new()
        .with_fn(|ctx, next| next.run(ctx))
        .with_fn(|ctx, next| {
            Box::pin(async move {
                shared_session(&ctx).await.fetch_add(1, Ordering::Relaxed);
                next.run(ctx).await
            })
        })
        .handler(|ctx| {
            Box::pin(async move {
                let count = shared_session(ctx).await.load(Ordering::Relaxed);
                SINK.fetch_add(count, Ordering::Relaxed);
                Ok(())
            })
        })
}

/// The baseline's `ctx.session()`: one session, shared by every update.
async fn shared_session<C>(_ctx: &C) -> &'static AtomicU64 {
    static SHARED: AtomicU64 = AtomicU64::new(0);
    &SHARED
}

/// Counts store calls and the bytes of JSON written (`{"field":value,..}` per patch).
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    pub(crate) loads: AtomicU64,
    pub(crate) applies: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

impl<S: Store> Counted<S> {
    pub(crate) fn new(inner: S) -> Self {
        Counted {
            inner,
            loads: AtomicU64::new(0),
            applies: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl<S: Store> Store for Counted<S> {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load(key)
    }
    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        self.applies.fetch_add(1, Ordering::Relaxed);
        let json: usize = patch
            .set
            .iter()
            .map(|(k, v)| k.len() + 3 + v.len())
            .sum::<usize>()
            + patch.set.len().saturating_sub(1)
            + 2;
        self.bytes.fetch_add(json as u64, Ordering::Relaxed);
        self.inner.apply(key, patch)
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(key)
    }
    fn returns_written_text(&self) -> bool {
        self.inner.returns_written_text()
    }
    fn reads_are_durable(&self) -> bool {
        self.inner.reads_are_durable()
    }
    fn revision(&self, key: &str) -> Revision {
        self.inner.revision(key)
    }
    fn applied_revision(&self, key: &str) -> Revision {
        self.inner.applied_revision(key)
    }
    fn load_with_revision<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<(Option<Record>, Revision), StoreError>> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load_with_revision(key)
    }
}
