//! Test support: a probe around a real store, and the session types the tests share.
//!
//! `ProbeStore` wraps a real `MemoryStore`; it counts and records every call, and can delay,
//! hold or fail calls so the tests can force the orderings they are about. Delays use
//! `tokio::time::sleep` and are meant for tests that run with paused time
//! (`#[tokio::test(start_paused = true)]`), where they are deterministic and instant.
// Test support shared by several test crates: `pub` so each can use it, unused in some.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "telegram")]
pub mod failover;
pub mod history;
pub mod logs;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use typed_session::store::{Patch, Record, StoreFuture};
use typed_session::{MemoryStore, Session, Store, StoreError, StoreOp};

/// A patch as the store received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenPatch {
    pub key: String,
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
    pub ttl: Option<Duration>,
}

/// How long a call takes before it reaches the inner store.
#[derive(Debug, Clone, Copy)]
pub enum Latency {
    None,
    /// A pseudo-random delay from 0 to `max_ms` (xorshift, fixed seed).
    Random {
        max_ms: u64,
    },
    /// Call number k waits `total - k` ms: later calls complete first.
    Reversed {
        total: u64,
    },
}

pub struct ProbeStore {
    inner: MemoryStore,
    pub loads: AtomicUsize,
    pub applies: AtomicUsize,
    pub deletes: AtomicUsize,
    pub patches: Mutex<Vec<SeenPatch>>,
    fail_applies: AtomicUsize,
    fail_loads: AtomicUsize,
    latency: Latency,
    calls: AtomicU64,
    rng: AtomicU64,
    /// When set, applies wait for a permit; `apply_started` is notified as each one arrives.
    apply_gate: Option<Semaphore>,
    pub apply_started: Notify,
    /// When set, deletes wait for a permit; `delete_started` is notified as each one arrives.
    delete_gate: Option<Semaphore>,
    pub delete_started: Notify,
}

impl ProbeStore {
    pub fn new(inner: MemoryStore) -> Arc<Self> {
        Self::build(inner, Latency::None, false)
    }

    pub fn with_latency(inner: MemoryStore, latency: Latency) -> Arc<Self> {
        Self::build(inner, latency, false)
    }

    /// A probe whose applies wait until `release_applies` gives them permits.
    pub fn gated(inner: MemoryStore) -> Arc<Self> {
        Self::build(inner, Latency::None, true)
    }

    /// A probe whose deletes wait until `release_deletes` gives them permits.
    pub fn gated_deletes(inner: MemoryStore) -> Arc<Self> {
        let mut probe = Self::build(inner, Latency::None, false);
        Arc::get_mut(&mut probe)
            .expect("not shared yet")
            .delete_gate = Some(Semaphore::new(0));
        probe
    }

    pub fn release_deletes(&self, n: usize) {
        if let Some(gate) = &self.delete_gate {
            gate.add_permits(n);
        }
    }

    fn build(inner: MemoryStore, latency: Latency, gated: bool) -> Arc<Self> {
        Arc::new(ProbeStore {
            inner,
            loads: AtomicUsize::new(0),
            applies: AtomicUsize::new(0),
            deletes: AtomicUsize::new(0),
            patches: Mutex::new(Vec::new()),
            fail_applies: AtomicUsize::new(0),
            fail_loads: AtomicUsize::new(0),
            latency,
            calls: AtomicU64::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            apply_gate: gated.then(|| Semaphore::new(0)),
            apply_started: Notify::new(),
            delete_gate: None,
            delete_started: Notify::new(),
        })
    }

    pub fn release_applies(&self, n: usize) {
        if let Some(gate) = &self.apply_gate {
            gate.add_permits(n);
        }
    }

    /// The next `n` applies fail (with a backend error) without reaching the inner store.
    pub fn fail_next_applies(&self, n: usize) {
        self.fail_applies.store(n, Ordering::SeqCst);
    }

    /// The next `n` loads fail.
    pub fn fail_next_loads(&self, n: usize) {
        self.fail_loads.store(n, Ordering::SeqCst);
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
    pub fn applies(&self) -> usize {
        self.applies.load(Ordering::SeqCst)
    }
    pub fn deletes(&self) -> usize {
        self.deletes.load(Ordering::SeqCst)
    }
    pub fn calls(&self) -> usize {
        self.loads() + self.applies() + self.deletes()
    }
    pub fn patches(&self) -> Vec<SeenPatch> {
        self.patches.lock().clone()
    }

    async fn delay(&self) {
        let k = self.calls.fetch_add(1, Ordering::SeqCst);
        let ms = match self.latency {
            Latency::None => return,
            Latency::Random { max_ms } => {
                let mut x = self.rng.load(Ordering::SeqCst);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.rng.store(x, Ordering::SeqCst);
                x % (max_ms + 1)
            }
            Latency::Reversed { total } => total.saturating_sub(k),
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn take_failure(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn injected(op: StoreOp, key: &str) -> StoreError {
    StoreError::backend("probe", op, key, "injected failure")
}

impl Store for ProbeStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.delay().await;
            if Self::take_failure(&self.fail_loads) {
                return Err(injected(StoreOp::Load, key));
            }
            self.inner.load(key).await
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            self.applies.fetch_add(1, Ordering::SeqCst);
            self.apply_started.notify_one();
            if let Some(gate) = &self.apply_gate {
                gate.acquire().await.expect("gate never closes").forget();
            }
            self.delay().await;
            if Self::take_failure(&self.fail_applies) {
                return Err(injected(StoreOp::Apply, key));
            }
            self.patches.lock().push(SeenPatch {
                key: key.to_owned(),
                set: patch
                    .set
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                remove: patch.remove.iter().map(|k| (*k).to_owned()).collect(),
                ttl: patch.ttl,
            });
            self.inner.apply(key, patch).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            self.deletes.fetch_add(1, Ordering::SeqCst);
            self.delete_started.notify_one();
            if let Some(gate) = &self.delete_gate {
                gate.acquire().await.expect("gate never closes").forget();
            }
            self.delay().await;
            self.inner.delete(key).await
        })
    }
}

/// The session most tests use.
#[derive(Session, Clone, Debug, PartialEq)]
pub struct Counter {
    #[default(0)]
    pub count: u64,
    #[default(String::from("en"))]
    pub lang: String,
    pub note: Option<String>,
}

/// A memory store holding `fields` (stored name, JSON text) for key `7:7`.
pub async fn seeded(fields: &[(&'static str, &str)]) -> MemoryStore {
    let memory = MemoryStore::new();
    let patch = fields
        .iter()
        .fold(Patch::new(), |patch, (k, v)| patch.set_field(k, *v));
    memory.apply("Counter:7:7", &patch).await.expect("seed");
    memory
}

/// `sessions`, then a handler that increments `count`.
pub fn incrementing(
    sessions: &typed_session::SessionMiddleware<Counter, typed_session::telegram::Update>,
) -> typed_session::Chain<typed_session::telegram::Update> {
    typed_session::Chain::new()
        .with(sessions.clone())
        .handler(|ctx| {
            Box::pin(async move {
                ctx.session().await?.update_count(|c| *c += 1);
                Ok(())
            })
        })
}

/// A chain of another update that sets `count` to 100 through `sessions`, and saves.
pub fn sets_count_to_100<U: Send + Sync + 'static>(
    sessions: &typed_session::SessionMiddleware<Counter, U>,
) -> typed_session::Chain<U> {
    typed_session::Chain::new()
        .with(sessions.clone())
        .handler(|ctx| {
            Box::pin(async move {
                ctx.session_of::<Counter>().await?.set_count(100);
                Ok(())
            })
        })
}

/// A chain whose handler reads `count`, lets another update of the same chat (`other`, id
/// `other_id`) set it to 100 and save, then sets it to what it read plus one: a stale write.
pub fn stale_writer(
    sessions: &typed_session::SessionMiddleware<Counter, typed_session::telegram::Update>,
    other_id: i64,
) -> typed_session::Chain<typed_session::telegram::Update> {
    let other = sets_count_to_100(sessions);
    typed_session::Chain::new()
        .with(sessions.clone())
        .handler(move |ctx| {
            let other = other.clone();
            Box::pin(async move {
                let counter = ctx.session().await?;
                let seen = counter.count();
                let (user, chat) = {
                    use typed_session::UpdateKeys;
                    (ctx.update().user_id(), ctx.update().chat_id())
                };
                let update = typed_session::telegram::Update::text(
                    other_id,
                    user.unwrap_or_default(),
                    chat.unwrap_or_default(),
                    "other",
                );
                other.run_update(update).await?;
                counter.set_count(seen + 1);
                Ok(())
            })
        })
}

/// Reads a stored field of the `Counter` session of `key` straight from the memory store
/// (where it is stored under the type's namespace), decoded.
pub fn stored<T: serde::de::DeserializeOwned>(
    store: &MemoryStore,
    key: &str,
    field: &str,
) -> Option<T> {
    let raw = store.raw(&format!("Counter:{key}"))?.remove(field)?;
    Some(serde_json::from_str(&raw).expect("stored fields are JSON"))
}

/// The URL of a server a store test needs, or `None` after printing that the test is skipped
/// (straight to the stderr handle: libtest captures `eprintln!`, and a skip must show). With
/// `TYPED_SESSION_REQUIRE_SERVERS` set (as `.ci/run` does) a missing URL fails the test.
pub fn server_url(var: &str, store: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("TYPED_SESSION_REQUIRE_SERVERS").is_some() => {
            panic!("{store}::{test} needs {var}, and TYPED_SESSION_REQUIRE_SERVERS is set")
        }
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {store}::{test}: {var} is not set"
            );
            None
        }
    }
}

/// A name no other test, and no earlier run, uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}:{}:{nanos}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// How a delivery ended, from the chain's result.
pub fn outcome_of(
    result: &Result<(), typed_session::BoxError>,
    recognised: bool,
) -> history::Outcome {
    use history::Outcome;
    use typed_session::SessionError;
    match result {
        Ok(()) if recognised => Outcome::Recognised,
        Ok(()) => Outcome::Saved,
        Err(error) => match error.downcast_ref::<SessionError>() {
            // The store answered: nothing of the update is stored.
            Some(
                SessionError::Conflict { .. }
                | SessionError::StaleWrite { .. }
                | SessionError::LeaseLost { .. }
                | SessionError::Busy { .. },
            ) => Outcome::Retry,
            // A store error: the store may or may not have applied the write.
            _ => Outcome::Indeterminate,
        },
    }
}

/// Removes a SQLite database file and the write-ahead log and shared-memory files beside it
/// (missing ones are fine): before a test, what an earlier run left; after it, its own.
pub fn remove_sqlite_file(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}
