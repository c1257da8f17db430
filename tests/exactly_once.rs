//! "Exactly once": an update told its writes were not saved has nothing of its own in the
//! store, an update told saved is in it, so delivering every failed update again until it
//! succeeds applies each once, under any interleaving and any number of replicas.
//!
//! The interleaving explorer runs replicas (session middlewares with registries of their
//! own) over one store, each delivering concurrent increments of one session, with seeded
//! delays everywhere an update can wait: the store's answer, a middleware before the session
//! middleware, one between it and the handler, the handler itself, and, with faults on, a
//! store call that fails before it reaches the store or times out after the store applied
//! it. Time is paused, so a seed is deterministic and hundreds take seconds. Every delivery
//! goes into a history ([`common::history`]) and the checker judges it. A failing seed is
//! printed with the scenario; `EXPLORE_SEED=<seed>` replays one, `EXPLORE_SEEDS=<n>` runs more.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::history::{self, Event, History, Outcome};
use common::{Counter, CounterAccess, outcome_of};
use parking_lot::Mutex;
use typed_session::store::{DeadlineExceeded, Patch, Record, StoreFuture};
use typed_session::telegram::Update;
use typed_session::{
    Chain, Context, MemoryStore, SessionError, SessionMiddleware, Store, StoreError, StoreOp,
};

/// SplitMix64: a seeded, well-mixed sequence, enough to draw delays from.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number in `lo..=hi` drawn from `parts`.
fn draw(parts: &[u64], lo: u64, hi: u64) -> u64 {
    let x = parts.iter().fold(0, |acc, p| mix(acc ^ mix(*p)));
    lo + x % (hi - lo + 1)
}

/// What may go wrong at a store call, per mille.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// The call fails before it reaches the store.
    fail: u64,
    /// An apply reaches the store and is applied, then its answer is a timeout.
    timeout_after_apply: u64,
}

const NO_FAULTS: Faults = Faults {
    fail: 0,
    timeout_after_apply: 0,
};

/// A real store behind seeded latency and injected faults (one per replica, over one shared
/// store).
struct FaultyStore {
    inner: Arc<dyn Store>,
    seed: u64,
    calls: Mutex<u64>,
    latency_ms: (u64, u64),
    faults: Faults,
}

impl FaultyStore {
    /// What a read meets before it reaches the store: its latency, and its fault.
    async fn reading(&self, key: &str) -> Result<(), StoreError> {
        let (latency, roll) = self.next();
        tokio::time::sleep(latency).await;
        if roll < self.faults.fail {
            trace(|| format!("replica {:x}: load failed", self.seed & 0xfff));
            return Err(injected(StoreOp::Load, key, "load failed"));
        }
        Ok(())
    }

    /// The latency of the next call, and the fault it meets (per mille draw).
    fn next(&self) -> (Duration, u64) {
        let call = {
            let mut calls = self.calls.lock();
            *calls += 1;
            *calls
        };
        let (lo, hi) = self.latency_ms;
        let ms = draw(&[self.seed, call, 1], lo, hi);
        (
            Duration::from_millis(ms),
            draw(&[self.seed, call, 2], 0, 999),
        )
    }
}

/// With `EXPLORE_TRACE` set, every apply is printed (to replay a seed and read what happened).
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("EXPLORE_TRACE").is_some() {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{}", line());
    }
}

fn injected(op: StoreOp, key: &str, what: &str) -> StoreError {
    StoreError::backend("faulty", op, key, format!("injected: {what}"))
}

impl Store for FaultyStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            self.reading(key).await?;
            self.inner.load(key).await
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let (latency, roll) = self.next();
            tokio::time::sleep(latency).await;
            if roll < self.faults.fail {
                trace(|| {
                    format!(
                        "replica {:x}: apply failed before the store",
                        self.seed & 0xfff
                    )
                });
                return Err(injected(StoreOp::Apply, key, "apply failed"));
            }
            let applied = self.inner.apply(key, patch).await;
            let timeout = roll < self.faults.fail + self.faults.timeout_after_apply;
            trace(|| {
                format!(
                    "{:?} replica {:x}: apply set {:?} expect {:?} writers {:?}: {}{}",
                    tokio::time::Instant::now(),
                    self.seed & 0xfff,
                    patch.set,
                    patch.expect,
                    patch.writers,
                    if applied.is_ok() {
                        "applied"
                    } else {
                        "refused"
                    },
                    if timeout {
                        ", answered with a timeout"
                    } else {
                        ""
                    }
                )
            });
            if timeout && applied.is_ok() {
                // As a store's deadline reports it: the caller cannot tell it was applied.
                return Err(StoreError::backend(
                    "faulty",
                    StoreOp::Apply,
                    key,
                    DeadlineExceeded::new("faulty", Duration::from_millis(20)),
                ));
            }
            applied
        })
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

    fn revision(&self, key: &str) -> typed_session::store::Revision {
        self.inner.revision(key)
    }

    fn applied_revision(&self, key: &str) -> typed_session::store::Revision {
        self.inner.applied_revision(key)
    }

    // The store's own read with its revision (SQLite's tells a key's first read), after the
    // same latency and faults as a load.
    fn load_with_revision<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Result<(Option<Record>, typed_session::store::Revision), StoreError>> {
        StoreFuture::new(async move {
            self.reading(key).await?;
            self.inner.load_with_revision(key).await
        })
    }
}

/// The store the replicas share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "sqlite")]
    SqliteGrouped,
}

/// One scenario of the explorer.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    backend: Backend,
    replicas: u64,
    /// Concurrent updates per replica in the first round.
    updates: u64,
    /// Store latency, ms.
    latency_ms: (u64, u64),
    /// Delays before the session middleware, between it and the handler, in the handler, ms.
    chain_ms: (u64, u64),
    faults: Faults,
    /// Increments per update, with a wait between them (the handler writes across an
    /// `.await`).
    writes: u64,
    /// In exclusive mode: one update per key at a time in each replica.
    exclusive: bool,
    /// In exclusive mode across processes: the lease's term and how long it is kept after an
    /// update (0: released), ms.
    lease_ms: Option<(u64, u64)>,
    /// Sessions kept decoded between updates and used without a load (`Freshness::Cached`).
    cached: bool,
    /// Every replica's signer tag prefers the same signature slot (otherwise the tags follow
    /// the seed, and two of three replicas prefer the same slot in about 1 run in 11).
    one_slot: bool,
}

/// The scenario of the report: two replicas, 50 increments each, store 1–50 ms, chain
/// delays 1–200 ms, no faults.
const REPORTED: Scenario = Scenario {
    backend: Backend::Memory,
    replicas: 2,
    updates: 50,
    latency_ms: (1, 50),
    chain_ms: (1, 200),
    faults: NO_FAULTS,
    writes: 1,
    exclusive: false,
    lease_ms: None,
    cached: false,
    one_slot: false,
};

const KEY: &str = "Counter:1:1";

async fn shared_store(backend: Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite | Backend::SqliteGrouped => {
            let store = typed_session::SqliteStore::connect("sqlite::memory:")
                .await
                .expect("an in-memory database")
                .with_group_commit(backend == Backend::SqliteGrouped);
            store.migrate().await.expect("migrate");
            Arc::new(store)
        }
    }
}

async fn stored_count(store: &dyn Store) -> u64 {
    let record = store.load(KEY).await.expect("the store answers");
    record
        .and_then(|r| r.get("count").map(|c| c.parse().expect("a count")))
        .unwrap_or(0)
}

/// What a handler made: the count of one delivery of an update, and whether it was
/// recognised as a redelivery (its write not applied).
struct Made {
    update: i64,
    delivery: u32,
    count: u64,
    recognised: bool,
}

/// The chain of replica `replica`: a middleware that waits, the session middleware, one that
/// waits before and after the rest of the chain, and a handler that waits, increments the
/// count (recording what it made) and waits again.
fn chain(
    scenario: Scenario,
    seed: u64,
    replica: u64,
    sessions: &SessionMiddleware<Counter, Update>,
    made: Arc<Mutex<Vec<Made>>>,
) -> Chain<Update> {
    let (lo, hi) = scenario.chain_ms;
    let wait = move |ctx: &Context<Update>, stage: u64| {
        let delivery: u64 = ctx
            .update()
            .text_of()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let id = ctx.update().update_id as u64;
        let ms = draw(&[seed, replica, id, delivery, stage], lo, hi);
        tokio::time::sleep(Duration::from_millis(ms))
    };
    Chain::new()
        .with_fn(move |ctx, next| {
            Box::pin(async move {
                wait(ctx, 1).await;
                next.run(ctx).await
            })
        })
        .with(sessions.clone())
        .with_fn(move |ctx, next| {
            Box::pin(async move {
                wait(ctx, 2).await;
                let outcome = next.run(ctx).await;
                wait(ctx, 4).await;
                outcome
            })
        })
        .handler(move |ctx| {
            let made = Arc::clone(&made);
            Box::pin(async move {
                wait(ctx, 3).await;
                let counter = ctx.session().await?;
                let mut count = counter.update_count(|c| {
                    *c += 1;
                    *c
                });
                for _ in 1..scenario.writes {
                    wait(ctx, 6).await;
                    count = counter.update_count(|c| {
                        *c += 1;
                        *c
                    });
                }
                let delivery = ctx
                    .update()
                    .text_of()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                made.lock().push(Made {
                    update: ctx.update().update_id,
                    delivery,
                    count,
                    recognised: counter.is_redelivery(),
                });
                wait(ctx, 5).await;
                Ok(())
            })
        })
}

/// What one run of a scenario found.
struct Run {
    events: Vec<Event>,
    violations: Vec<history::Violation>,
    rounds: u32,
}

/// Runs `scenario` with `seed`: every update delivered once, the store read, then every
/// failed update delivered again until each has succeeded; the history is checked.
async fn run(scenario: Scenario, seed: u64) -> Run {
    let shared = shared_store(scenario.backend).await;
    let started = tokio::time::Instant::now();
    let history = Arc::new(History::new(move || {
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }));
    let made = Arc::new(Mutex::new(Vec::new()));
    let chains: Vec<Chain<Update>> = (0..scenario.replicas)
        .map(|replica| {
            let store = FaultyStore {
                inner: Arc::clone(&shared),
                seed: mix(seed ^ mix(replica + 1)),
                calls: Mutex::new(0),
                latency_ms: scenario.latency_ms,
                faults: scenario.faults,
            };
            // The signers' tags follow the seed too, so a seed replays the same slots (and
            // tags that prefer the same slot are among the cases explored).
            let mut tag = mix(seed ^ mix(replica + 101));
            if scenario.one_slot {
                tag = tag << 5 | 7;
            }
            let mut sessions = SessionMiddleware::<Counter, Update>::builder(store).writer_tag(tag);
            if scenario.cached {
                sessions = sessions.freshness(typed_session::Freshness::Cached);
            }
            if scenario.exclusive {
                sessions = sessions.exclusive(Duration::from_secs(3_600));
            }
            if let Some((term, keep)) = scenario.lease_ms {
                sessions = sessions
                    .exclusive_across_processes(
                        Duration::from_secs(3_600),
                        Duration::from_millis(term),
                    )
                    .keep_lease(Duration::from_millis(keep));
            }
            let sessions = sessions.build();
            chain(scenario, seed, replica, &sessions, Arc::clone(&made))
        })
        .collect();

    let mut pending: Vec<(u64, i64)> = (0..scenario.replicas)
        .flat_map(|replica| {
            (1..=scenario.updates).map(move |i| (replica, (replica * 1_000 + i) as i64))
        })
        .collect();
    let mut violations = Vec::new();
    let mut delivery = 0;
    while !pending.is_empty() && delivery < 100 {
        delivery += 1;
        let mut tasks = tokio::task::JoinSet::new();
        for &(replica, id) in &pending {
            let chain = chains[replica as usize].clone();
            let history = Arc::clone(&history);
            let made = Arc::clone(&made);
            tasks.spawn(async move {
                let invoked = history.now();
                let update = Update::text(id, 1, 1, &delivery.to_string());
                let result = chain.run_update(update).await;
                let ended = history.now();
                let mine = made
                    .lock()
                    .iter()
                    .find(|m| m.update == id && m.delivery == delivery)
                    .map(|m| (m.count, m.recognised));
                let recognised = mine.is_some_and(|(_, r)| r);
                let outcome = outcome_of(&result, recognised);
                let wrote = mine.filter(|_| !recognised).map(|(count, _)| count);
                trace(|| format!("update {id} delivery {delivery} on {replica}: {outcome:?}, made {wrote:?} ({result:?})"));
                history.record(Event::counted(
                    (replica as u32, KEY.to_owned()),
                    (id, delivery),
                    (invoked, ended),
                    outcome,
                    wrote,
                ));
                (replica, id, outcome)
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (replica, id, outcome) = done.expect("no delivery panics");
            if matches!(outcome, Outcome::Retry | Outcome::Indeterminate) {
                failed.push((replica, id));
            }
        }
        if delivery == 1 && scenario.writes == 1 {
            let round: Vec<Event> = history
                .events()
                .into_iter()
                .filter(|e| e.delivery == 1)
                .collect();
            violations.extend(history::check_round(&round, stored_count(&*shared).await));
        }
        failed.sort_unstable();
        pending = failed;
    }
    if !pending.is_empty() {
        violations.push(history::Violation {
            rule: "progress",
            detail: format!(
                "{} updates still failing after {delivery} deliveries",
                pending.len()
            ),
        });
    }
    let events = history.events();
    let stored = stored_count(&*shared).await;
    if scenario.writes == 1 {
        violations.extend(history::check_counter(&events, stored));
    } else {
        violations.extend(history::check_total(&events, stored, scenario.writes));
    }
    Run {
        events,
        violations,
        rounds: delivery,
    }
}

/// The seeds to explore: `EXPLORE_SEED` alone, or `EXPLORE_SEEDS` (default `default`) from 1.
fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("EXPLORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("EXPLORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

/// Runs `scenario` over `seeds` on a paused clock, and fails listing every failing seed with
/// its first violations.
fn explore(name: &str, scenario: Scenario, seeds: &[u64]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let started = std::time::Instant::now();
    let mut failing = Vec::new();
    let mut deliveries = 0;
    let mut most_rounds = 0;
    for &seed in seeds {
        let found = runtime.block_on(run(scenario, seed));
        deliveries += found.events.len();
        most_rounds = most_rounds.max(found.rounds);
        if !found.violations.is_empty() {
            failing.push((seed, found.violations));
        }
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "explored {name}: {} seeds, {deliveries} deliveries, at most {most_rounds} rounds, {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    if !failing.is_empty() {
        let report: Vec<String> = failing
            .iter()
            .map(|(seed, violations)| {
                let first: Vec<String> = violations.iter().take(3).map(|v| v.to_string()).collect();
                format!("  EXPLORE_SEED={seed}: {}", first.join("; "))
            })
            .collect();
        panic!(
            "{name}: {} of {} seeds break exactly-once ({scenario:?}):\n{}",
            failing.len(),
            seeds.len(),
            report.join("\n")
        );
    }
}

/// The report, as it was made: two replicas, 50 concurrent increments each of one session,
/// store 1–50 ms, middlewares and handler 1–200 ms. Before the fix, half the seeds had
/// updates told "conflict, run again" whose increment was stored, and redelivery counted
/// them twice (101–107 of 100).
#[test]
fn two_replicas_incrementing_one_field_count_each_update_once() {
    explore("reported", REPORTED, &seeds(200));
}

/// Three replicas on the memory store, a store call in 20 failing before the store and one
/// in 20 applied and answered with a timeout.
const MEMORY_FAULTS: Scenario = Scenario {
    replicas: 3,
    updates: 20,
    latency_ms: (0, 20),
    chain_ms: (0, 50),
    faults: Faults {
        fail: 50,
        timeout_after_apply: 50,
    },
    ..REPORTED
};

#[test]
fn three_replicas_with_store_failures_and_timeouts_after_apply_count_each_update_once() {
    explore("memory, 3 replicas, faults", MEMORY_FAULTS, &seeds(150));
}

/// The seeds that found each race fixed so far, kept whatever `EXPLORE_SEEDS` says (a seed
/// replays the same delays and faults; the interleaving follows the code, so these are
/// regression anchors, not proofs):
/// * reported 7, 8, 12: an update whose increment another update's patch saved was told
///   "conflict" when its own patch met one on later writes, and counted twice;
/// * faults 56: the read that tells whether a timed-out patch landed failed, and the update
///   was left to a window that lost its id before the redelivery;
/// * faults 43, 147: the window's slot was chosen by the smallest id, so another replica's
///   next patch evicted the id at once;
/// * faults 146: the ring's cursor (`@next`) was read as an update's id: a patch that never
///   landed was taken as landed, and an acknowledged update was lost;
/// * faults 47: the ring forgot its size when its last slots were empty, and wrapped early;
/// * faults 566: a recognised redelivery was told to run again because the patch it ran for
///   others' writes conflicted, and was not recognised the next time.
#[test]
fn the_seeds_that_found_each_race_stay_green() {
    explore("reported, anchors", REPORTED, &[7, 8, 12]);
    explore(
        "memory faults, anchors",
        MEMORY_FAULTS,
        &[43, 47, 56, 146, 147, 566],
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn two_replicas_on_sqlite_with_faults_count_each_update_once() {
    let scenario = Scenario {
        backend: Backend::Sqlite,
        updates: 25,
        latency_ms: (0, 20),
        chain_ms: (0, 50),
        faults: Faults {
            fail: 50,
            timeout_after_apply: 50,
        },
        ..REPORTED
    };
    explore("sqlite, 2 replicas, faults", scenario, &seeds(100));
}

#[cfg(feature = "sqlite")]
#[test]
fn three_replicas_on_sqlite_with_group_commit_count_each_update_once() {
    let scenario = Scenario {
        backend: Backend::SqliteGrouped,
        replicas: 3,
        updates: 20,
        latency_ms: (0, 10),
        chain_ms: (0, 50),
        faults: Faults {
            fail: 30,
            timeout_after_apply: 30,
        },
        ..REPORTED
    };
    explore(
        "sqlite group commit, 3 replicas, faults",
        scenario,
        &seeds(100),
    );
}

// The checker itself: each rule fails on the history that breaks it.

fn event(
    process: u32,
    update: i64,
    delivery: u32,
    span: (u64, u64),
    outcome: Outcome,
    wrote: Option<u64>,
) -> Event {
    Event::counted(
        (process, KEY.to_owned()),
        (update, delivery),
        span,
        outcome,
        wrote,
    )
}

fn rules(violations: &[history::Violation]) -> Vec<&'static str> {
    violations.iter().map(|v| v.rule).collect()
}

#[test]
fn the_checker_passes_a_history_that_counts_each_update_once() {
    let events = [
        event(0, 1, 1, (0, 10), Outcome::Saved, Some(1)),
        event(1, 2, 1, (5, 12), Outcome::Retry, Some(2)),
        event(1, 2, 2, (20, 30), Outcome::Saved, Some(2)),
        event(0, 3, 1, (21, 40), Outcome::Indeterminate, Some(3)),
        event(0, 3, 2, (50, 60), Outcome::Recognised, None),
    ];
    assert_eq!(
        rules(&history::check_counter(&events, 3)),
        Vec::<&str>::new()
    );
    assert_eq!(
        rules(&history::check_round(&events[..2], 1)),
        Vec::<&str>::new()
    );
}

#[test]
fn the_checker_finds_an_update_told_failed_whose_write_is_stored() {
    // Update 2 was told "conflict" but its count 2 is stored; delivered again it made 3.
    let events = [
        event(0, 1, 1, (0, 10), Outcome::Saved, Some(1)),
        event(1, 2, 1, (5, 12), Outcome::Retry, Some(2)),
        event(1, 2, 2, (20, 30), Outcome::Saved, Some(3)),
    ];
    let found = rules(&history::check_counter(&events, 3));
    assert!(found.contains(&"exactly once"), "{found:?}");
    assert!(found.contains(&"a failed update is visible"), "{found:?}");
    assert_eq!(
        rules(&history::check_round(&events[..2], 2)),
        ["acknowledged = stored"]
    );
}

#[test]
fn the_checker_finds_a_lost_update_and_a_stale_saved_read() {
    let events = [
        event(0, 1, 1, (0, 10), Outcome::Saved, Some(1)),
        // Began after count 1 was saved, yet made 1 again: it read 0.
        event(1, 2, 1, (11, 20), Outcome::Saved, Some(1)),
    ];
    let found = rules(&history::check_counter(&events, 1));
    assert!(found.contains(&"lost update"), "{found:?}");
    assert!(found.contains(&"real time"), "{found:?}");
    assert!(found.contains(&"exactly once"), "{found:?}");
}

#[test]
fn the_checker_finds_a_read_going_backwards_in_one_process() {
    let events = [
        event(0, 1, 1, (0, 10), Outcome::Saved, Some(1)),
        event(0, 2, 1, (0, 11), Outcome::Saved, Some(2)),
        // Same process, began after count 2 was saved, read 0 (refused, but a read all the same).
        event(0, 3, 1, (12, 20), Outcome::Retry, Some(1)),
        event(0, 3, 2, (21, 30), Outcome::Saved, Some(3)),
    ];
    assert_eq!(
        rules(&history::check_counter(&events, 3)),
        ["read went backwards"]
    );
}

#[test]
fn events_survive_their_line_format() {
    let e = event(2, -5, 3, (7, 9), Outcome::Indeterminate, None);
    assert_eq!(Event::from_line(&e.to_line()), Some(e));
    assert_eq!(Event::from_line("not\tan event"), None);
}

/// A handler that increments, waits, and increments again, in exclusive mode: no other update
/// of the key saves between its two writes, so they land together or not at all, and each
/// update adds exactly two.
#[test]
fn two_writes_across_an_await_in_exclusive_mode_count_each_update_once() {
    let scenario = Scenario {
        writes: 2,
        exclusive: true,
        ..MEMORY_FAULTS
    };
    explore("two writes, exclusive", scenario, &seeds(100));
}

/// Three replicas in exclusive mode across processes, on SQLite, with handlers that outlast a
/// third of the 150 ms lease, so renewals run while updates do; store calls (claims and
/// renewals included) fail and time out after landing as in [`MEMORY_FAULTS`]. First with the
/// lease released in each patch, then kept 5 ms between updates.
///
/// The paused clock moves the tasks' timers, but a lease's `until` and deadlines are on the
/// real clock: no lease runs out under a live holder here, and what is explored is the order
/// of claims, renewals, saves and hand-overs. It also makes a replica waiting for a kept lease
/// poll hundreds of times (25 ms apart on the paused clock) before 5 real ms pass. A read
/// that fails while an update waits for the lease is read again (until the wait's deadline),
/// so the kept variant runs with failing calls too: before that rule, such a replica failed
/// nearly every update it waited with, and 6 seeds of 1,000 made no progress.
#[cfg(feature = "sqlite")]
#[test]
fn leased_replicas_releasing_or_keeping_their_leases_count_each_update_once() {
    let released = Scenario {
        backend: Backend::Sqlite,
        lease_ms: Some((150, 0)),
        ..MEMORY_FAULTS
    };
    explore("leases released", released, &seeds(50));
    let kept = Scenario {
        lease_ms: Some((150, 5)),
        ..released
    };
    explore("leases kept", kept, &seeds(50));
}

/// Known hole, kept to be fixed (ARCHITECTURE.md, "Exactly once", last paragraph): without
/// exclusive mode, another update's patch can save the first of two writes an update makes
/// across an `.await`, and a conflict can then take back the second; the update runs again,
/// is recognised as saved, and its second write is never applied (seed 2 of the reported
/// scenario: 195 stored for 100 updates of two increments each).
#[test]
#[ignore = "known hole: writes across an .await without exclusive mode can be saved in part"]
fn two_writes_across_an_await_count_each_update_once() {
    let scenario = Scenario {
        writes: 2,
        ..REPORTED
    };
    explore("two writes", scenario, &seeds(100));
}

// Deterministic cases of the rules the explorer checks at random.

/// A chain on `sessions` whose handler increments `count` and then waits for `go`, having
/// said so on `wrote`; updates with `update_id` 1 go straight through.
fn held_incrementing(
    sessions: &SessionMiddleware<Counter, Update>,
    wrote: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
) -> Chain<Update> {
    Chain::new().with(sessions.clone()).handler(move |ctx| {
        let (wrote, go) = (Arc::clone(&wrote), Arc::clone(&go));
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            if ctx.update().update_id != 1 {
                wrote.notify_one();
                go.notified().await;
            }
            Ok(())
        })
    })
}

/// The reported defect, step by step: A increments and is still running when B's save
/// carries A's increment to the store; C then increments, and another writer changes `count`
/// before A ends. A's own save carries only C's write and is refused, yet A is told it was
/// saved (its increment is stored); C, whose write was refused, is told to run again.
/// Before, A was told "conflict, run again" and its redelivery counted it twice.
#[tokio::test]
async fn an_update_whose_write_another_update_saved_is_told_saved_whatever_its_own_save_meets() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (wrote, go) = (Arc::default(), Arc::<tokio::sync::Notify>::default());
    let chain = held_incrementing(&sessions, Arc::clone(&wrote), Arc::clone(&go));

    let a = tokio::spawn({
        let chain = chain.clone();
        async move { chain.run_update(Update::text(2, 7, 7, "a")).await }
    });
    wrote.notified().await;
    // B: saved, and its patch carries A's increment.
    chain
        .run_update(Update::text(1, 7, 7, "b"))
        .await
        .expect("B is saved");
    assert_eq!(common::stored::<u64>(&memory, "7:7", "count"), Some(2));
    let c = tokio::spawn({
        let chain = chain.clone();
        async move {
            let ctx = Context::new(Update::text(3, 7, 7, "c"));
            let result = chain.run(&ctx).await;
            (result, ctx.must_retry())
        }
    });
    wrote.notified().await;
    // Another writer (a replica, an admin tool) changes `count`.
    memory
        .apply("Counter:7:7", &Patch::new().set_field("count", "100"))
        .await
        .expect("written");

    go.notify_one();
    a.await
        .expect("no panic")
        .expect("A's increment is stored: A is saved");
    go.notify_one();
    let (c, must_retry) = c.await.expect("no panic");
    let c = c.expect_err("C's write was refused");
    assert!(
        matches!(
            c.downcast_ref::<SessionError>(),
            Some(SessionError::Conflict { .. })
        ),
        "{c}"
    );
    assert!(must_retry, "C runs again");
    assert_eq!(common::stored::<u64>(&memory, "7:7", "count"), Some(100));
}

/// An update that wrote only `lang` runs the save that also carries another running update's
/// write of `count`, which another writer has changed: the refusal is about `count`, so the
/// update's own write is sent again and saved, and it is told so. Before, it was told the
/// conflict (run again) while its `lang` stayed in the session to be written later.
#[tokio::test]
async fn a_conflict_on_a_field_an_update_did_not_write_does_not_fail_it() {
    let memory = MemoryStore::new();
    let sessions = SessionMiddleware::<Counter, Update>::new(memory.clone());
    let (wrote, go) = (Arc::default(), Arc::<tokio::sync::Notify>::default());
    let counting = held_incrementing(&sessions, Arc::clone(&wrote), Arc::clone(&go));
    let naming = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.set_lang("fr");
            Ok(())
        })
    });

    let c = tokio::spawn(async move { counting.run_update(Update::text(3, 7, 7, "c")).await });
    wrote.notified().await;
    memory
        .apply("Counter:7:7", &Patch::new().set_field("count", "100"))
        .await
        .expect("written");
    naming
        .run_update(Update::text(4, 7, 7, "fr"))
        .await
        .expect("its write of lang is saved");
    assert_eq!(
        common::stored::<String>(&memory, "7:7", "lang").as_deref(),
        Some("fr")
    );
    go.notify_one();
    c.await
        .expect("no panic")
        .expect_err("C's write of count was refused");
    assert_eq!(common::stored::<u64>(&memory, "7:7", "count"), Some(100));
    assert_eq!(sessions.unsaved_sessions(), 0);
}

/// The fault rates of the replicas suite's contended run (about every 13th store call failing
/// before the store, every 17th apply applied and answered with a deadline error), three
/// replicas with 60 updates each in flight at once, on fast store calls: many ids pass through
/// the window while a replica finds out whether its timed-out patch landed.
#[cfg(feature = "sqlite")]
const SUITE_RATES: Scenario = Scenario {
    backend: Backend::Sqlite,
    replicas: 3,
    updates: 60,
    latency_ms: (0, 3),
    chain_ms: (0, 5),
    faults: Faults {
        fail: 77,
        timeout_after_apply: 59,
    },
    ..REPORTED
};

#[cfg(feature = "sqlite")]
#[test]
fn three_replicas_at_the_replicas_suites_fault_rates_count_each_update_once() {
    explore(
        "sqlite, 3 replicas, the suite's fault rates",
        SUITE_RATES,
        &seeds(100),
    );
}

/// The suite's fault rates with every replica's tag preferring one signature slot: each
/// replica signs in a slot of its own all the same.
#[cfg(feature = "sqlite")]
#[test]
fn three_replicas_whose_tags_prefer_one_signature_slot_count_each_update_once() {
    let scenario = Scenario {
        one_slot: true,
        ..SUITE_RATES
    };
    explore(
        "sqlite, 3 replicas preferring one signature slot",
        scenario,
        &seeds(100),
    );
}

/// Seeds of the suite's fault rates that broke exactly-once:
/// * 287: the look-up after a timed-out save failed, the resend was refused, and the next
///   look-up came after other replicas had pushed the patch's ids out of the window: now the
///   refusal carries the record as the store read it, and the look-up uses it;
/// * 1113: the look-ups kept failing while the ids went out of the window: now every patch
///   carries its writer's signature. It broke again while a writer signed in the slot its tag
///   prefers, when two replicas' tags preferred the same one (kept here with every tag
///   preferring one slot): now a writer does not sign in a slot another signed lately.
#[cfg(feature = "sqlite")]
#[test]
fn the_seeds_that_found_each_race_at_the_suites_fault_rates_stay_green() {
    explore("suite's fault rates, anchors", SUITE_RATES, &[287, 1113]);
    let one_slot = Scenario {
        one_slot: true,
        ..SUITE_RATES
    };
    explore("one signature slot preferred, anchors", one_slot, &[1113]);
}

/// The suite's fault rates with sessions kept decoded and used without a load: each replica
/// writes on a view other replicas have overtaken, is refused, and runs again on the record
/// the refusal carried.
#[cfg(feature = "sqlite")]
#[test]
fn three_cached_replicas_at_the_suites_fault_rates_count_each_update_once() {
    let scenario = Scenario {
        cached: true,
        ..SUITE_RATES
    };
    explore(
        "sqlite, 3 cached replicas, the suite's fault rates",
        scenario,
        &seeds(100),
    );
}

/// Memory, three cached replicas with faults: the memory store tells revisions, so a replica
/// whose view was overtaken loads again rather than writing on it.
#[test]
fn three_cached_replicas_on_the_memory_store_count_each_update_once() {
    let scenario = Scenario {
        cached: true,
        ..MEMORY_FAULTS
    };
    explore("memory, 3 cached replicas, faults", scenario, &seeds(100));
}
