//! One replica of a bot, as its own OS process, for the replicas tests: it delivers `--updates`
//! updates of one chat to a chain whose handler increments a counter with `update_count`, and
//! delivers each again until it is acknowledged, as Telegram does with a webhook answered with
//! an error. Every `--fail-every`-th save fails before it reaches the store. It prints one JSON
//! line: how many updates were acknowledged, how many deliveries were refused by a conflict
//! and how many by a failed save.
//!
//! `--redeliver-every K` delivers every K-th acknowledged update once more, as Telegram does
//! when the answer was lost (a crash between the save and the answer): it must not count
//! twice.
//!
//! `--lease-ms T` runs it in exclusive mode across processes, with a lease of `T` ms;
//! `--hold-at ID --hold-ms M` makes the first delivery of update `ID` keep its session (and
//! the lease) for `M` ms after its write, announced by a `holding ID` line, so that a test can
//! kill or pause the process while it holds the key.
//!
//! Besides the final JSON line, it prints `ack ID` as each update is acknowledged, so a test
//! that kills it still knows what it acknowledged.
//!
//! `replica --store sqlite|postgres|mysql|redis|redis-cluster|mongodb --url URL --table NAME --user ID
//!  --first-id N --updates N [--fail-every K] [--redeliver-every K] [--lease-ms T]
//!  [--hold-at ID --hold-ms M]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use typed_session::store::{Patch, Record, StoreFuture};
use typed_session::telegram::Update;
use typed_session::{
    BoxError, Chain, Context, MongoStore, MySqlStore, PostgresStore, RedisStore, Session,
    SessionError, SessionMiddleware, SqliteStore, Store, StoreError, StoreOp,
};

#[derive(Session)]
struct Tally {
    count: u64,
}

/// A store whose every `every`-th apply fails before reaching the real one (0: never).
struct Failing {
    inner: Arc<dyn Store>,
    every: u64,
    applies: AtomicU64,
}

impl Store for Failing {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        self.inner.load(key)
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        let n = self.applies.fetch_add(1, Ordering::Relaxed) + 1;
        if self.every > 0 && n.is_multiple_of(self.every) {
            return StoreFuture::ready(Err(StoreError::backend(
                "injected",
                StoreOp::Apply,
                key,
                "injected save failure",
            )));
        }
        self.inner.apply(key, patch)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        self.inner.delete(key)
    }

    fn returns_written_text(&self) -> bool {
        self.inner.returns_written_text()
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn open(kind: &str, url: &str, table: &str) -> Result<Arc<dyn Store>, BoxError> {
    Ok(match kind {
        "sqlite" => Arc::new(SqliteStore::connect(url).await?.with_table(table)?),
        "postgres" => Arc::new(PostgresStore::connect(url).await?.with_table(table)?),
        "mysql" => Arc::new(MySqlStore::connect(url).await?.with_table(table)?),
        "redis" => Arc::new(RedisStore::connect(url).await?.with_prefix(table)),
        // A comma-separated list of the cluster's node URLs.
        "redis-cluster" => {
            let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
            Arc::new(
                RedisStore::connect_cluster(&nodes)
                    .await?
                    .with_prefix(table),
            )
        }
        "mongodb" => Arc::new(
            MongoStore::connect(url, "typed_session_test")
                .await?
                .with_collection(table)?,
        ),
        other => return Err(format!("unknown store {other:?}").into()),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let need = |name: &str| arg(&args, name).ok_or_else(|| format!("{name} is required"));
    let (kind, url, table) = (need("--store")?, need("--url")?, need("--table")?);
    let user: i64 = need("--user")?.parse()?;
    let updates: i64 = need("--updates")?.parse()?;
    let every: u64 = arg(&args, "--fail-every").map_or(Ok(0), |v| v.parse())?;
    let redeliver: i64 = arg(&args, "--redeliver-every").map_or(Ok(0), |v| v.parse())?;
    // Update ids are unique per bot: each replica gets its own.
    let first: i64 = need("--first-id")?.parse()?;

    let store = Failing {
        inner: open(&kind, &url, &table).await?,
        every,
        applies: AtomicU64::new(0),
    };
    let hold_at: Option<i64> = arg(&args, "--hold-at").map(|v| v.parse()).transpose()?;
    let hold = Duration::from_millis(arg(&args, "--hold-ms").map_or(Ok(0), |v| v.parse())?);
    let mut builder = SessionMiddleware::<Tally, Update>::builder(store);
    if let Some(lease) = arg(&args, "--lease-ms") {
        let lease = Duration::from_millis(lease.parse()?);
        builder = builder.exclusive_across_processes(Duration::from_secs(120), lease);
    }
    let sessions = builder.build();
    let held = Arc::new(AtomicBool::new(false));
    let chain = Chain::new().with(sessions.clone()).handler(move |ctx| {
        let held = Arc::clone(&held);
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            if hold_at == Some(ctx.update().update_id) && !held.swap(true, Ordering::Relaxed) {
                println!("holding {}", ctx.update().update_id);
                // The slow handler a test kills or pauses this process in.
                tokio::time::sleep(hold).await;
            }
            Ok(())
        })
    });

    let (mut acked, mut conflicts, mut failed_saves) = (0_u64, 0_u64, 0_u64);
    let mut failed_loads = 0_u64;
    let mut redelivered = 0_u64;
    for id in first..first + updates {
        let deliveries = if redeliver > 0 && (id - first + 1) % redeliver == 0 {
            2
        } else {
            1
        };
        for delivery in 0..deliveries {
            redelivered += u64::from(delivery > 0);
            deliver(
                &chain,
                id,
                user,
                &mut acked,
                &mut conflicts,
                (&mut failed_saves, &mut failed_loads),
            )
            .await?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "acked": acked,
            "redelivered": redelivered,
            "conflicts": conflicts,
            "failed_saves": failed_saves,
            "conflicts_counted": sessions.stats().conflicts(),
            "redeliveries_recognised": sessions.stats().redeliveries(),
            "failed_loads": failed_loads,
            "lease_takeovers": sessions.stats().lease_takeovers(),
            "leases_lost": sessions.stats().leases_lost(),
        })
    );
    Ok(())
}

/// Delivers update `id` until it is acknowledged.
async fn deliver(
    chain: &Chain<Update>,
    id: i64,
    user: i64,
    acked: &mut u64,
    conflicts: &mut u64,
    (failed_saves, failed_loads): (&mut u64, &mut u64),
) -> Result<(), BoxError> {
    loop {
        let ctx = Context::new(Update::text(id, user, user, "+1"));
        match chain.run(&ctx).await {
            Ok(()) => {
                *acked += 1;
                println!("ack {id}");
                return Ok(());
            }
            // The session could not be loaded (in exclusive mode, the lease claim failed):
            // the webhook answers with an error status, and Telegram delivers it again.
            Err(error)
                if matches!(
                    error.downcast_ref::<SessionError>(),
                    Some(SessionError::Load { .. })
                ) =>
            {
                *failed_loads += 1;
            }
            Err(error) if ctx.must_retry() => {
                match error.downcast_ref::<SessionError>() {
                    Some(SessionError::Conflict { .. }) => *conflicts += 1,
                    _ => *failed_saves += 1,
                }
                // Delivered again, as Telegram does after an error status.
            }
            Err(error) => return Err(error),
        }
    }
}
