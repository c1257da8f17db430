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
//! `--lease-ms T` runs it in exclusive mode across processes, with a lease of `T` ms, and
//! `--keep-lease-ms K` keeps each lease for `K` ms after an update for the next one;
//! `--hold-at ID --hold-ms M` makes the first delivery of update `ID` keep its session (and
//! the lease) for `M` ms after its write, announced by a `holding ID` line, so that a test can
//! kill or pause the process while it holds the key.
//!
//! `--concurrent N` keeps N updates of the chat in flight at once instead of one: each is
//! delivered again as soon as it fails, concurrently with the others, until acknowledged.
//! `--timeout-every K` answers every K-th save with a deadline error after the store applied
//! it (the caller cannot tell it landed). `--history PATH` appends every delivery to PATH as a
//! line of the exactly-once checker's history (`tests/common/history.rs`), for the test to
//! check across processes.
//!
//! `--on-call alice|bob --rounds N --meet DIR` runs the write-skew check instead: the session
//! is a `Ward` of two doctors on call, and for each of `N` chats (users `--user` onwards) the
//! doctor goes off call if the other one is on call. Each handler reads the other's field,
//! then meets the other process (each leaves a file in `DIR` and waits for the other's), then
//! writes its own field: both read before either writes. A serializable run leaves at least
//! one doctor on call in every chat.
//!
//! `--freshness cached` keeps sessions decoded between updates and uses them without a load
//! ([`Freshness::Cached`]); the default loads each update's session.
//!
//! Besides the final JSON line, it prints `ack ID` as each update is acknowledged, so a test
//! that kills it still knows what it acknowledged.
//!
//! `replica --store sqlite|postgres|mysql|redis|redis-cluster|mongodb --url URL --table NAME --user ID
//!  --first-id N --updates N [--fail-every K] [--timeout-every K] [--redeliver-every K]
//!  [--lease-ms T [--keep-lease-ms K]] [--hold-at ID --hold-ms M] [--concurrent N --history PATH]`

#[path = "../../../tests/common/history.rs"]
mod history;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use history::{Event, History, Outcome};
use typed_session::store::{DeadlineExceeded, Patch, Record, StoreFuture};
use typed_session::telegram::Update;
use typed_session::{
    BoxError, Chain, Context, Freshness, MongoStore, MySqlStore, PostgresStore, RedisStore,
    Session, SessionError, SessionMiddleware, SqliteStore, Store, StoreError, StoreOp,
};

#[derive(Session)]
struct Tally {
    count: u64,
}

/// Two doctors; the ward needs at least one on call.
#[derive(Session)]
#[session(accessor = "ward")]
struct Ward {
    #[default(true)]
    alice: bool,
    #[default(true)]
    bob: bool,
}

/// A store whose every `every`-th apply fails before reaching the real one, and every
/// `timeout_every`-th is applied and then answered with a deadline error (0: never).
struct Failing {
    inner: Arc<dyn Store>,
    every: u64,
    timeout_every: u64,
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
        if self.timeout_every > 0 && n.is_multiple_of(self.timeout_every) {
            return StoreFuture::new(async move {
                self.inner.apply(key, patch).await?;
                Err(StoreError::backend(
                    "injected",
                    StoreOp::Apply,
                    key,
                    DeadlineExceeded::new("injected", Duration::ZERO),
                ))
            });
        }
        self.inner.apply(key, patch)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        self.inner.delete(key)
    }

    fn returns_written_text(&self) -> bool {
        self.inner.returns_written_text()
    }

    fn reads_are_durable(&self) -> bool {
        self.inner.reads_are_durable()
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

    let timeout_every: u64 = arg(&args, "--timeout-every").map_or(Ok(0), |v| v.parse())?;
    let store = Failing {
        inner: open(&kind, &url, &table).await?,
        every,
        timeout_every,
        applies: AtomicU64::new(0),
    };
    if let Some(doctor) = arg(&args, "--on-call") {
        let rounds: i64 = need("--rounds")?.parse()?;
        let meet = std::path::PathBuf::from(need("--meet")?);
        let sessions = SessionMiddleware::<Ward, Update>::builder(store)
            .freshness(freshness(&args)?)
            .build();
        let acked = on_call(sessions, &doctor, (user, rounds), first, meet).await?;
        println!("{}", serde_json::json!({ "acked": acked }));
        return Ok(());
    }
    let hold_at: Option<i64> = arg(&args, "--hold-at").map(|v| v.parse()).transpose()?;
    let hold = Duration::from_millis(arg(&args, "--hold-ms").map_or(Ok(0), |v| v.parse())?);
    let mut builder =
        SessionMiddleware::<Tally, Update>::builder(store).freshness(freshness(&args)?);
    if let Some(lease) = arg(&args, "--lease-ms") {
        let lease = Duration::from_millis(lease.parse()?);
        builder = builder.exclusive_across_processes(Duration::from_secs(120), lease);
    }
    if let Some(keep) = arg(&args, "--keep-lease-ms") {
        builder = builder.keep_lease(Duration::from_millis(keep.parse()?));
    }
    let sessions = builder.build();
    if let Some(concurrent) = arg(&args, "--concurrent") {
        let history = need("--history")?;
        let process = u32::try_from(first / 1_000_000)?;
        let run = Contended {
            sessions: sessions.clone(),
            user,
            process,
        };
        let acked = run
            .deliver_all(first, updates, concurrent.parse()?, &history)
            .await?;
        println!(
            "{}",
            serde_json::json!({
                "acked": acked,
                "redeliveries_recognised": sessions.stats().redeliveries(),
                "conflicts_counted": sessions.stats().conflicts(),
                "failed_saves": sessions.stats().failed_saves(),
            })
        );
        return Ok(());
    }
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
    // Updates acknowledged without a single store read (under a lease kept from the
    // replica's previous update): this process runs one update at a time, so the loads
    // counter standing still across an update says so.
    let mut unloaded = 0_u64;
    for id in first..first + updates {
        let deliveries = if redeliver > 0 && (id - first + 1) % redeliver == 0 {
            2
        } else {
            1
        };
        let loads = sessions.stats().loads();
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
        unloaded += u64::from(sessions.stats().loads() == loads);
    }
    println!(
        "{}",
        serde_json::json!({
            "acked": acked,
            "unloaded": unloaded,
            "redelivered": redelivered,
            "conflicts": conflicts,
            "failed_saves": failed_saves,
            "conflicts_counted": sessions.stats().conflicts(),
            "redeliveries_recognised": sessions.stats().redeliveries(),
            "failed_loads": failed_loads,
            "loads": sessions.stats().loads(),
            "lease_takeovers": sessions.stats().lease_takeovers(),
            "leases_lost": sessions.stats().leases_lost(),
        })
    );
    Ok(())
}

/// How many times one update is delivered before the replica gives up on it (a store that
/// never answers, a table that was never made).
const MAX_DELIVERIES: usize = 10_000;

/// Delivers update `id` until it is acknowledged.
async fn deliver(
    chain: &Chain<Update>,
    id: i64,
    user: i64,
    acked: &mut u64,
    conflicts: &mut u64,
    (failed_saves, failed_loads): (&mut u64, &mut u64),
) -> Result<(), BoxError> {
    for _ in 0..MAX_DELIVERIES {
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
    Err(format!("update {id} was not acknowledged after {MAX_DELIVERIES} deliveries").into())
}

/// Several updates of one chat in flight at once, each delivered again until acknowledged,
/// every delivery written to a history.
struct Contended {
    sessions: SessionMiddleware<Tally, Update>,
    user: i64,
    process: u32,
}

impl Contended {
    /// Delivers updates `first..first + updates`, `concurrent` at a time; returns how many
    /// were acknowledged (all of them, or an error).
    async fn deliver_all(
        &self,
        first: i64,
        updates: i64,
        concurrent: usize,
        history: &str,
    ) -> Result<u64, BoxError> {
        // What each delivery's handler made: (update, delivery) -> (count, recognised).
        type Made = Arc<Mutex<Vec<((i64, u32), (u64, bool))>>>;
        let made: Made = Arc::default();
        let chain = {
            let made = Arc::clone(&made);
            Chain::new()
                .with(self.sessions.clone())
                .handler(move |ctx| {
                    let made = Arc::clone(&made);
                    Box::pin(async move {
                        let tally = ctx.session().await?;
                        let count = tally.update_count(|c| {
                            *c += 1;
                            *c
                        });
                        let delivery = ctx
                            .update()
                            .text_of()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0);
                        if let Ok(mut made) = made.lock() {
                            made.push((
                                (ctx.update().update_id, delivery),
                                (count, tally.is_redelivery()),
                            ));
                        }
                        // Let the others of the chat run between the write and the save.
                        tokio::task::yield_now().await;
                        Ok(())
                    })
                })
        };
        let log = Arc::new(History::new(History::wall_clock));
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrent.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for id in first..first + updates {
            let (chain, made, log, permits) = (
                chain.clone(),
                Arc::clone(&made),
                Arc::clone(&log),
                Arc::clone(&permits),
            );
            let (user, process) = (self.user, self.process);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await?;
                for delivery in 1..=1_000_u32 {
                    let invoked = log.now();
                    let ctx = Context::new(Update::text(id, user, user, &delivery.to_string()));
                    let result = chain.run(&ctx).await;
                    let ended = log.now();
                    let mine = made.lock().ok().and_then(|made| {
                        made.iter()
                            .find(|(at, _)| *at == (id, delivery))
                            .map(|&(_, made)| made)
                    });
                    let recognised = mine.is_some_and(|(_, recognised)| recognised);
                    let outcome = match &result {
                        Ok(()) if recognised => Outcome::Recognised,
                        Ok(()) => Outcome::Saved,
                        Err(error) => match error.downcast_ref::<SessionError>() {
                            Some(SessionError::Conflict { .. }) => Outcome::Retry,
                            _ => Outcome::Indeterminate,
                        },
                    };
                    let wrote = mine.filter(|_| !recognised).map(|(count, _)| count);
                    log.record(Event::counted(
                        (process, format!("Tally:{user}:{user}")),
                        (id, delivery),
                        (invoked, ended),
                        outcome,
                        wrote,
                    ));
                    if result.is_ok() {
                        println!("ack {id}");
                        return Ok::<u64, BoxError>(1);
                    }
                    if !ctx.must_retry() && !matches!(outcome, Outcome::Indeterminate) {
                        return Err(format!("update {id} failed for good: {result:?}").into());
                    }
                }
                Err(format!("update {id} was never acknowledged").into())
            });
        }
        let mut acked = 0;
        while let Some(done) = tasks.join_next().await {
            acked += done??;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(history)?;
        for event in log.events() {
            writeln!(file, "{}", event.to_line())?;
        }
        Ok(acked)
    }
}

/// The write-skew check (see the top of this file): for each chat, one update that takes
/// `doctor` off call if the other doctor is on call, delivered again until acknowledged;
/// returns how many were acknowledged.
async fn on_call(
    sessions: SessionMiddleware<Ward, Update>,
    doctor: &str,
    (first_user, rounds): (i64, i64),
    first_id: i64,
    meet: std::path::PathBuf,
) -> Result<u64, BoxError> {
    let alice = match doctor {
        "alice" => true,
        "bob" => false,
        other => return Err(format!("--on-call takes alice or bob, not {other:?}").into()),
    };
    let other = if alice { "bob" } else { "alice" };
    let (mine, theirs) = (doctor.to_owned(), other.to_owned());
    let chain = Chain::new().with(sessions).handler(move |ctx| {
        let (meet, mine, theirs) = (meet.clone(), mine.clone(), theirs.clone());
        Box::pin(async move {
            let ward = ctx.ward().await?;
            let other_on_call = if alice { ward.bob() } else { ward.alice() };
            let chat = ctx.update().text_of().unwrap_or_default().to_owned();
            std::fs::write(meet.join(format!("{chat}.{mine}")), b"")?;
            let theirs = meet.join(format!("{chat}.{theirs}"));
            // Wait for the other process's read, within a deadline.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !theirs.exists() {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("the other doctor never read chat {chat}").into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if other_on_call {
                if alice {
                    ward.set_alice(false);
                } else {
                    ward.set_bob(false);
                }
            }
            Ok(())
        })
    });
    let mut acked = 0;
    for round in 0..rounds {
        let (id, user) = (first_id + round, first_user + round);
        for _ in 0..1_000 {
            let ctx = Context::new(Update::text(id, user, user, &user.to_string()));
            match chain.run(&ctx).await {
                Ok(()) => {
                    acked += 1;
                    break;
                }
                Err(_) if ctx.must_retry() => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(acked)
}

/// The `--freshness` argument: `checked` (the default) or `cached`.
fn freshness(args: &[String]) -> Result<Freshness, BoxError> {
    match arg(args, "--freshness").as_deref() {
        None | Some("checked") => Ok(Freshness::Checked),
        Some("cached") => Ok(Freshness::Cached),
        Some(other) => Err(format!("--freshness takes checked or cached, not {other:?}").into()),
    }
}
