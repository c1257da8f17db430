//! The anchors' workloads (`../shared/anchors`), reproduced for typed-session, printing one
//! JSON line per measurement in the anchors' schema so `summarize.js` reads both.
//!
//! ```sh
//! # A: throughput on the memory store (one config per process, like the anchors)
//! cargo run --release -p typed-session-bench --bin anchor_bench -- --workload seq --variant session --runtime current-thread
//! # C: store traffic per update, 20-field session, scenarios write1 / read / none
//! cargo run --release -p typed-session-bench --bin anchor_bench -- --bench writes
//! # D-like: the full middleware on a persistent store, sequential (`--variant cached`:
//! `Freshness::Cached`; `--variant raw`: the driver alone)
//! cargo run --release -p typed-session-bench --bin anchor_bench -- --bench store --store sqlite-wal
//! ```
//!
//! Workload: `--updates` updates (200,000) over `--users` users (10,000), each user equally
//! often, in an order shuffled with mulberry32 seed 1 and Fisher-Yates, exactly as `lib.js`
//! does; the update objects are built inside the timed loop. Chain: the session middleware,
//! a middleware that increments `count`, a handler that reads it. Baseline: the same chain
//! with a shared counter instead of a session. One warm-up run, then the median of `--runs`
//! runs; a run during which the rest of the machine used more than `--max_others` % of the
//! CPUs is rejected and retried, as in the anchors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::json;
use typed_session::schema::Schema;
use typed_session::store::{Patch, Record, StoreFuture};
use typed_session::telegram::{Chat, Message, Update, User};
use typed_session::{
    BoxError, Chain, Freshness, MemoryStore, Session, SessionMiddleware, Store, StoreError,
};

// ---- allocation counter (`--bench allocs`) -----------------------------------------------

struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Heap allocations per update, session and baseline, on the `seq` workload.
async fn allocs(o: &Options) -> Result<serde_json::Value, BoxError> {
    let seq = user_sequence(o.updates, o.users);
    let mut per_update = serde_json::Map::new();
    for variant in ["baseline", "session"] {
        let chain = Arc::new(if variant == "session" {
            count_chain(Arc::new(MemoryStore::new()))
        } else {
            baseline_chain()
        });
        feed(&chain, &seq, "seq", 1).await?; // warm: tables grown, users stored
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        feed(&chain, &seq, "seq", 1).await?;
        let n = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / o.updates as f64;
        per_update.insert(variant.into(), json!(r3(n)));
    }
    Ok(
        json!({ "bench": "allocs", "fw": "typed-session", "updates": o.updates, "allocations_per_update": per_update }),
    )
}

// ---- options ----------------------------------------------------------------------------

struct Options {
    bench: String,
    workload: String,
    variant: String,
    runtime: String,
    store: String,
    updates: usize,
    users: usize,
    runs: usize,
    batch: usize,
    width: usize,
    max_others: f64,
}

fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        bench: "throughput".into(),
        workload: "seq".into(),
        variant: "session".into(),
        runtime: "current-thread".into(),
        store: "memory".into(),
        updates: 0,
        users: 0,
        runs: 0,
        batch: 1000,
        width: 100,
        max_others: 10.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{pair:?}: every flag takes a value").into());
        };
        match flag.as_str() {
            "--bench" => o.bench = value.clone(),
            "--workload" => o.workload = value.clone(),
            "--variant" => o.variant = value.clone(),
            "--runtime" => o.runtime = value.clone(),
            "--store" => o.store = value.clone(),
            "--updates" => o.updates = value.parse()?,
            "--users" => o.users = value.parse()?,
            "--runs" => o.runs = value.parse()?,
            "--batch" => o.batch = value.parse()?,
            "--width" => o.width = value.parse()?,
            "--max_others" => o.max_others = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    // The anchors' defaults per part: A 200,000/10,000 x5, C 20,000/1,000, D 20,000/1,000 x3.
    let (updates, users, runs) = match o.bench.as_str() {
        "throughput" => (200_000, 10_000, 5),
        "writes" => (20_000, 1_000, 1),
        _ => (20_000, 1_000, 3),
    };
    o.updates = if o.updates == 0 { updates } else { o.updates };
    o.users = if o.users == 0 { users } else { o.users };
    o.runs = if o.runs == 0 { runs } else { o.runs };
    Ok(o)
}

// ---- workload (lib.js) ------------------------------------------------------------------

fn mulberry32(mut seed: u32) -> impl FnMut() -> f64 {
    move || {
        seed = seed.wrapping_add(0x6d2b_79f5);
        let mut t = (seed ^ (seed >> 15)).wrapping_mul(1 | seed);
        t = (t.wrapping_add((t ^ (t >> 7)).wrapping_mul(61 | t))) ^ t;
        f64::from(t ^ (t >> 14)) / 4_294_967_296.0
    }
}

fn user_sequence(updates: usize, users: usize) -> Vec<u32> {
    let mut seq: Vec<u32> = (0..updates).map(|i| (i % users) as u32).collect();
    let mut rnd = mulberry32(1);
    for i in (1..updates).rev() {
        let j = (rnd() * (i + 1) as f64).floor() as usize;
        seq.swap(i, j);
    }
    seq
}

fn user_id(u: u32) -> i64 {
    1_000_000 + i64::from(u)
}

fn make_update(i: usize, u: u32) -> Update {
    let id = user_id(u);
    let mut message = Message::new(i as i64 + 1, Chat::new(id, "private"));
    message.from = Some(User::new(id, "U"));
    message.date = 1_700_000_000;
    message.text = Some("hi".into());
    let mut update = Update::new(i as i64 + 1);
    update.message = Some(message);
    update
}

async fn feed(
    chain: &Arc<Chain<Update>>,
    seq: &[u32],
    workload: &str,
    batch: usize,
) -> Result<(), BoxError> {
    if workload == "seq" {
        for (i, &u) in seq.iter().enumerate() {
            chain.run_update(make_update(i, u)).await?;
        }
        return Ok(());
    }
    if workload == "window" {
        let chain = Arc::clone(chain);
        return window(seq, batch, move |i, u| {
            let chain = Arc::clone(&chain);
            async move { chain.run_update(make_update(i, u)).await }
        })
        .await;
    }
    for start in (0..seq.len()).step_by(batch) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, &u) in seq.iter().enumerate().skip(start).take(batch) {
            let chain = Arc::clone(chain);
            tasks.spawn(async move { chain.run_update(make_update(i, u)).await });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
    }
    Ok(())
}

/// `width` updates always in flight, no barrier (lib.js `feedWindow`): each finished one is
/// replaced by the next.
async fn window<F, Fut>(seq: &[u32], width: usize, run: F) -> Result<(), BoxError>
where
    F: Fn(usize, u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &u) in seq.iter().enumerate() {
        if tasks.len() >= width
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        tasks.spawn(run(i, u));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

// ---- run meter (lib.js `meter`) ---------------------------------------------------------

const HZ: f64 = 100.0;

fn proc_stat_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        return 0.0;
    }
    f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
}

fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state letter.
    if f.len() < 13 {
        return 0.0;
    }
    (f[10] + f[11]) / HZ
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (kb / 1024.0 * 10.0).round() / 10.0
}

struct Measured {
    wall: f64,
    cpu: f64,
    others_pct: f64,
}

async fn measure<F: std::future::Future<Output = Result<(), BoxError>>>(
    run: F,
) -> Result<Measured, BoxError> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (j0, c0, t0) = (proc_stat_busy(), own_cpu_seconds(), Instant::now());
    run.await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - c0;
    let others = ((proc_stat_busy() - j0) / HZ - cpu).max(0.0) / (wall * ncpu) * 100.0;
    Ok(Measured {
        wall,
        cpu,
        others_pct: (others * 10.0).round() / 10.0,
    })
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---- sessions and chains ----------------------------------------------------------------

#[derive(Session)]
struct Count {
    #[default(0)]
    count: u64,
}

static SINK: AtomicU64 = AtomicU64::new(0);

fn count_chain(store: Arc<dyn Store>) -> Chain<Update> {
    count_chain_with(store, Freshness::Checked)
}

fn count_chain_with(store: Arc<dyn Store>, freshness: Freshness) -> Chain<Update> {
    Chain::new()
        .with(
            SessionMiddleware::<Count, Update>::builder(store)
                .freshness(freshness)
                .build(),
        )
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

fn baseline_chain() -> Chain<Update> {
    let shared = Arc::new(AtomicU64::new(0));
    let incr = Arc::clone(&shared);
    Chain::new()
        .with_fn(|ctx, next| next.run(ctx))
        .with_fn(move |ctx, next| {
            incr.fetch_add(1, Ordering::Relaxed);
            next.run(ctx)
        })
        .handler(move |_ctx| {
            SINK.fetch_add(shared.load(Ordering::Relaxed), Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        })
}

/// Counts store calls and the bytes of JSON written (`{"field":value,..}` per patch).
struct Counted<S> {
    inner: S,
    loads: AtomicU64,
    applies: AtomicU64,
    deletes: AtomicU64,
    bytes: AtomicU64,
}

impl<S: Store> Counted<S> {
    fn new(inner: S) -> Self {
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
}

// ---- A: throughput ----------------------------------------------------------------------

async fn throughput(o: &Options) -> Result<serde_json::Value, BoxError> {
    let seq = user_sequence(o.updates, o.users);
    let run_once = || async {
        let chain = Arc::new(if o.variant == "session" {
            count_chain(Arc::new(MemoryStore::new()))
        } else {
            baseline_chain()
        });
        measure(feed(&chain, &seq, &o.workload, o.batch)).await
    };
    run_once().await?; // warm-up
    let (mut ups, mut cpu_us, mut others, mut rejected) = (vec![], vec![], vec![], 0);
    let mut tries = 0;
    while ups.len() < o.runs {
        tries += 1;
        let m = run_once().await?;
        if m.others_pct > o.max_others && tries < 5 * o.runs {
            rejected += 1;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            continue;
        }
        ups.push((o.updates as f64 / m.wall).round());
        cpu_us.push(m.cpu * 1e6 / o.updates as f64);
        others.push(m.others_pct);
    }
    let med = median(&ups);
    Ok(json!({
        "bench": "throughput", "fw": "typed-session", "workload": o.workload, "variant": o.variant,
        "runtime": o.runtime, "updates": o.updates, "users": o.users,
        "batch": if o.workload == "seq" { 1 } else { o.batch },
        "median_ups": med, "us_per_update": r3(1e6 / med), "best_ups": ups.iter().cloned().fold(0.0, f64::max),
        "runs_ups": ups, "cpu_us_per_update": r3(median(&cpu_us)), "runs_others_busy_pct": others,
        "rejected_runs": rejected, "peak_rss_mb": peak_rss_mb(), "api_calls": 0, "sink_ok": true,
    }))
}

// ---- C: store traffic, 20-field session -------------------------------------------------

#[derive(Session)]
#[session(accessor = "wide")]
struct Wide {
    #[default(0)]
    count: u64,
    #[default("value-1".into())]
    field1: String,
    #[default(2000)]
    field2: u64,
    #[default("value-3".into())]
    field3: String,
    #[default(4000)]
    field4: u64,
    #[default("value-5".into())]
    field5: String,
    #[default(6000)]
    field6: u64,
    #[default("value-7".into())]
    field7: String,
    #[default(8000)]
    field8: u64,
    #[default("value-9".into())]
    field9: String,
    #[default(10000)]
    field10: u64,
    #[default("value-11".into())]
    field11: String,
    #[default(12000)]
    field12: u64,
    #[default("value-13".into())]
    field13: String,
    #[default(14000)]
    field14: u64,
    #[default("value-15".into())]
    field15: String,
    #[default(16000)]
    field16: u64,
    #[default("value-17".into())]
    field17: String,
    #[default(18000)]
    field18: u64,
    #[default("value-19".into())]
    field19: String,
}

fn wide_chain(store: Arc<Counted<MemoryStore>>, scenario: &str) -> Chain<Update> {
    let chain = Chain::new().with(SessionMiddleware::<Wide, Update>::new(store));
    match scenario {
        "write1" => chain
            .with_fn(|ctx, next| {
                Box::pin(async move {
                    ctx.wide().await?.update_count(|c| *c += 1);
                    next.run(ctx).await
                })
            })
            .handler(|ctx| {
                Box::pin(async move {
                    SINK.fetch_add(ctx.wide().await?.count(), Ordering::Relaxed);
                    Ok(())
                })
            }),
        "read" => chain.with_fn(|ctx, next| next.run(ctx)).handler(|ctx| {
            Box::pin(async move {
                SINK.fetch_add(ctx.wide().await?.field2(), Ordering::Relaxed);
                Ok(())
            })
        }),
        _ => chain.with_fn(|ctx, next| next.run(ctx)).handler(|_ctx| {
            SINK.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        }),
    }
}

async fn writes(o: &Options) -> Result<Vec<serde_json::Value>, BoxError> {
    let seq = user_sequence(o.updates, o.users);
    let session_json_bytes = {
        let w = Wide::default();
        (0..Wide::FIELDS.len())
            .map(|i| Wide::FIELDS[i].name.len() + 3 + w.encode_field(i).map_or(0, |e| e.len()))
            .sum::<usize>()
            + Wide::FIELDS.len()
            + 1
    };
    let mut lines = vec![];
    for scenario in ["write1", "read", "none"] {
        for mode in ["seq", "conc"] {
            let store = Arc::new(Counted::new(MemoryStore::new()));
            let chain = Arc::new(wide_chain(Arc::clone(&store), scenario));
            feed(&chain, &seq, mode, o.batch).await?;
            let n = o.updates as f64;
            let (gets, sets, dels, bytes) = (
                store.loads.load(Ordering::Relaxed) as f64,
                store.applies.load(Ordering::Relaxed) as f64,
                store.deletes.load(Ordering::Relaxed) as f64,
                store.bytes.load(Ordering::Relaxed) as f64,
            );
            let r = |x: f64| (x * 1e4).round() / 1e4;
            lines.push(json!({
                "bench": "writes", "fw": "typed-session", "scenario": scenario, "feed": mode,
                "updates": o.updates, "users": o.users, "gets_per_update": r(gets / n),
                "sets_per_update": r(sets / n), "deletes_per_update": r(dels / n),
                "bytes_written_per_update": r(bytes / n), "bytes_per_set": if sets > 0.0 { r(bytes / sets) } else { 0.0 },
                "session_json_bytes": session_json_bytes, "changed_field_bytes": "\"count\":20".len(),
                "api_calls": 0, "sink_ok": true,
            }));
        }
    }
    Ok(lines)
}

// ---- D-like: persistent stores, sequential ----------------------------------------------

async fn open_store(name: &str, run: usize) -> Result<Arc<dyn Store>, BoxError> {
    let table = format!("bench_{}_{run}", std::process::id());
    let _ = &table; // unused when no SQL store is compiled in
    let env = |var: &str| std::env::var(var).map_err(|_| format!("--store {name} needs {var}"));
    Ok(match name {
        "memory" => Arc::new(MemoryStore::new()),
        "sqlite-memory" | "sqlite-wal" | "sqlite-wal-group" | "sqlite-wal-single"
        | "sqlite-wal-full" => {
            let url = if name == "sqlite-memory" {
                "sqlite::memory:".to_owned()
            } else {
                let path = std::env::temp_dir().join(format!(
                    "typed-session-bench-{}-{run}.db",
                    std::process::id()
                ));
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                format!("sqlite://{}", path.display())
            };
            let mut store = typed_session::SqliteStore::connect(&url)
                .await?
                .with_table(&table)?;
            // Group commit is on by default; `sqlite-wal-single` measures a commit per patch.
            if name == "sqlite-wal-single" {
                store = store.with_group_commit(false);
            }
            // `sqlite-wal-full`: every commit synced to the disk before it is acknowledged.
            if name == "sqlite-wal-full" {
                store = store.with_durability(typed_session::store::Durability::Full)?;
            }
            store.migrate().await?;
            Arc::new(store)
        }
        "postgres" => {
            let store = typed_session::PostgresStore::connect(&env("POSTGRES_URL")?)
                .await?
                .with_table(&table)?;
            store.migrate().await?;
            Arc::new(store)
        }
        "mysql" => {
            let store = typed_session::MySqlStore::connect(&env("MYSQL_URL")?)
                .await?
                .with_table(&table)?;
            store.migrate().await?;
            Arc::new(store)
        }
        "redis" => Arc::new(
            typed_session::RedisStore::connect(&env("REDIS_URL")?)
                .await?
                .with_prefix(&format!("{table}:")),
        ),
        "redis-cluster" => {
            let urls = env("REDIS_CLUSTER_URLS")?;
            let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
            Arc::new(
                typed_session::RedisStore::connect_cluster(&nodes)
                    .await?
                    .with_prefix(&format!("{table}:")),
            )
        }
        "mongodb" => {
            let store =
                typed_session::MongoStore::connect(&env("MONGODB_URL")?, "typed_session_bench")
                    .await?
                    .with_collection(&table)?;
            store.migrate().await?;
            Arc::new(store)
        }
        other => {
            let _ = env;
            return Err(format!(
                "unknown or not compiled-in store {other:?} (build with --all-features)"
            )
            .into());
        }
    })
}

async fn store_bench(o: &Options) -> Result<serde_json::Value, BoxError> {
    let seq = user_sequence(o.updates, o.users);
    let (mut ups, mut others, mut cpu_wall) = (vec![], vec![], vec![]);
    let (mut lost, mut rejected, mut round_trips) = (0u64, 0, (0.0, 0.0));
    let mut tries = 0;
    for run in 0.. {
        if ups.len() >= o.runs {
            break;
        }
        if o.variant == "raw" {
            let raw = Arc::new(raw::Raw::open(&o.store, run).await?);
            let m = if o.workload == "window" {
                let r = Arc::clone(&raw);
                measure(window(&seq, o.width, move |_, u| {
                    let r = Arc::clone(&r);
                    async move { r.increment(&raw_key(u)).await }
                }))
                .await?
            } else {
                measure(async {
                    for &u in &seq {
                        raw.increment(&raw_key(u)).await?;
                    }
                    Ok(())
                })
                .await?
            };
            let warmup = run == 0;
            tries += 1;
            if !warmup && m.others_pct > o.max_others && tries < 5 * o.runs {
                rejected += 1;
            } else if !warmup {
                ups.push((o.updates as f64 / m.wall).round());
                others.push(m.others_pct);
                cpu_wall.push((m.cpu / m.wall * 100.0).round() / 100.0);
                round_trips = (1.0, 1.0);
            }
            lost = 0;
            for (u, n) in expected_counts(&seq) {
                lost += n.saturating_sub(raw.count(&raw_key(u)).await?);
            }
            raw.close().await?;
            continue;
        }
        let store = Arc::new(Counted::new(open_store(&o.store, run).await?));
        let freshness = if o.variant == "cached" {
            Freshness::Cached
        } else {
            Freshness::Checked
        };
        let chain = Arc::new(count_chain_with(
            Arc::clone(&store) as Arc<dyn Store>,
            freshness,
        ));
        let m = measure(feed(&chain, &seq, &o.workload, o.width)).await?;
        let warmup = run == 0;
        tries += 1;
        if !warmup && m.others_pct > o.max_others && tries < 5 * o.runs {
            rejected += 1;
        } else if !warmup {
            ups.push((o.updates as f64 / m.wall).round());
            others.push(m.others_pct);
            cpu_wall.push((m.cpu / m.wall * 100.0).round() / 100.0);
            round_trips = (
                store.loads.load(Ordering::Relaxed) as f64 / o.updates as f64,
                store.applies.load(Ordering::Relaxed) as f64 / o.updates as f64,
            );
        }
        lost = 0;
        for (u, n) in expected_counts(&seq) {
            // Stored under the session type's namespace.
            let key = format!("{}:{1}:{1}", Count::NAMESPACE, user_id(u));
            let stored = store
                .load(&key)
                .await?
                .and_then(|r| r.get("count").and_then(|c| c.parse::<u64>().ok()))
                .unwrap_or(0);
            lost += n.saturating_sub(stored);
        }
    }
    let med = median(&ups);
    let (bench, journal) = match o.store.as_str() {
        "sqlite-wal" => ("sqlite", "wal-normal"),
        "sqlite-wal-group" => ("sqlite", "wal-normal-group-commit"),
        "sqlite-wal-single" => ("sqlite", "wal-normal-single-commit"),
        // The anchors name WAL with synchronous=FULL plain `wal`.
        "sqlite-wal-full" => ("sqlite", "wal"),
        "sqlite-memory" => ("sqlite", "memory"),
        _ => ("store", ""),
    };
    let fw = if o.variant == "raw" {
        "raw-driver"
    } else {
        "typed-session"
    };
    let width = if o.workload == "window" { o.width } else { 1 };
    let freshness = if o.variant == "cached" {
        "cached"
    } else {
        "checked"
    };
    Ok(json!({
        "bench": bench, "fw": fw, "store": o.store, "freshness": freshness, "journal": journal, "workload": o.workload, "width": width,
        "updates": o.updates, "users": o.users, "median_ups": med, "us_per_update": r3(1e6 / med),
        "runs_ups": ups, "runs_cpu_wall": cpu_wall, "runs_others_busy_pct": others, "rejected_runs": rejected,
        "lost_updates": lost, "loads_per_update": r3(round_trips.0), "writes_per_update": r3(round_trips.1),
        "peak_rss_mb": peak_rss_mb(), "api_calls": 0, "sink_ok": true,
    }))
}

/// How many updates each user gets in `seq`.
fn expected_counts(seq: &[u32]) -> HashMap<u32, u64> {
    let mut expected: HashMap<u32, u64> = HashMap::new();
    for &u in seq {
        *expected.entry(u).or_default() += 1;
    }
    expected
}

fn raw_key(u: u32) -> String {
    format!("{0}:{0}", user_id(u))
}

/// The physical limit of this design on each store: the same two round trips per update (read
/// the session by key, write the changed field back merged into it), hand-written through the
/// driver, with nothing else: no versions, no writers, no condition (so, like Telegraf, it
/// loses increments when updates of one user overlap).
mod raw {
    use std::sync::Arc;

    use typed_session::BoxError;
    use typed_session::redis::AsyncCommands;
    use typed_session::sqlx::{self, Row};

    pub(crate) enum Raw {
        Postgres(sqlx::PgPool, String),
        MySql(sqlx::MySqlPool, String),
        Redis(typed_session::redis::aio::ConnectionManager, String),
        Sqlite(Arc<parking_lot::Mutex<typed_session::rusqlite::Connection>>),
    }

    fn count_of(data: Option<String>) -> u64 {
        data.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0)
    }

    impl Raw {
        pub(crate) async fn open(store: &str, run: usize) -> Result<Self, BoxError> {
            let table = format!("raw_{}_{run}", std::process::id());
            let env =
                |var: &str| std::env::var(var).map_err(|_| format!("--store {store} needs {var}"));
            Ok(match store {
                "postgres" => {
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(16)
                        .connect(&env("POSTGRES_URL")?)
                        .await?;
                    sqlx::query(&format!(
                        "CREATE TABLE {table} (key TEXT PRIMARY KEY, data JSONB NOT NULL)"
                    ))
                    .execute(&pool)
                    .await?;
                    Raw::Postgres(pool, table)
                }
                "mysql" => {
                    let pool = sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(16)
                        .connect(&env("MYSQL_URL")?)
                        .await?;
                    sqlx::query(&format!(
                        "CREATE TABLE {table} (k VARCHAR(100) PRIMARY KEY, data JSON NOT NULL)"
                    ))
                    .execute(&pool)
                    .await?;
                    Raw::MySql(pool, table)
                }
                "redis" => {
                    let client = typed_session::redis::Client::open(env("REDIS_URL")?)?;
                    let connection =
                        typed_session::redis::aio::ConnectionManager::new(client).await?;
                    Raw::Redis(connection, format!("{table}:"))
                }
                "sqlite-wal" => {
                    let path = std::env::temp_dir().join(format!("{table}.db"));
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                    let connection = typed_session::rusqlite::Connection::open(&path)?;
                    connection.execute_batch(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         CREATE TABLE sessions (key TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL);",
                    )?;
                    Raw::Sqlite(Arc::new(parking_lot::Mutex::new(connection)))
                }
                other => return Err(format!("no raw row for {other}").into()),
            })
        }

        /// Reads the session, adds one to `count`, writes the field back.
        pub(crate) async fn increment(&self, key: &str) -> Result<(), BoxError> {
            let count = self.count(key).await? + 1;
            let data = format!("{{\"count\":{count}}}");
            match self {
                Raw::Postgres(pool, t) => {
                    sqlx::query(&format!(
                        "INSERT INTO {t} (key, data) VALUES ($1, $2::jsonb) \
                         ON CONFLICT (key) DO UPDATE SET data = {t}.data || EXCLUDED.data"
                    ))
                    .bind(key)
                    .bind(data)
                    .execute(pool)
                    .await?;
                }
                Raw::MySql(pool, t) => {
                    sqlx::query(&format!(
                        "INSERT INTO {t} (k, data) VALUES (?, ?) \
                         ON DUPLICATE KEY UPDATE data = JSON_MERGE_PATCH(data, VALUES(data))"
                    ))
                    .bind(key)
                    .bind(data)
                    .execute(pool)
                    .await?;
                }
                Raw::Redis(connection, prefix) => {
                    let mut connection = connection.clone();
                    let () = connection
                        .hset(format!("{prefix}{key}"), "count", count)
                        .await?;
                }
                Raw::Sqlite(connection) => {
                    connection
                        .lock()
                        .prepare_cached(
                            "INSERT INTO sessions (key, data) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO UPDATE SET data = json_patch(data, excluded.data)",
                        )?
                        .execute((key, data))?;
                }
            }
            Ok(())
        }

        pub(crate) async fn count(&self, key: &str) -> Result<u64, BoxError> {
            Ok(match self {
                Raw::Postgres(pool, t) => count_of(
                    sqlx::query(&format!("SELECT data::text FROM {t} WHERE key = $1"))
                        .bind(key)
                        .fetch_optional(pool)
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?,
                ),
                Raw::MySql(pool, t) => count_of(
                    sqlx::query(&format!("SELECT CAST(data AS CHAR) FROM {t} WHERE k = ?"))
                        .bind(key)
                        .fetch_optional(pool)
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?,
                ),
                Raw::Redis(connection, prefix) => {
                    let mut connection = connection.clone();
                    let count: Option<u64> =
                        connection.hget(format!("{prefix}{key}"), "count").await?;
                    count.unwrap_or(0)
                }
                Raw::Sqlite(connection) => {
                    use typed_session::rusqlite::OptionalExtension;
                    count_of(
                        connection
                            .lock()
                            .prepare_cached("SELECT data FROM sessions WHERE key = ?1")?
                            .query_row([key], |row| row.get(0))
                            .optional()?,
                    )
                }
            })
        }

        pub(crate) async fn close(&self) -> Result<(), BoxError> {
            match self {
                Raw::Postgres(pool, t) => {
                    sqlx::query(&format!("DROP TABLE {t}"))
                        .execute(pool)
                        .await?;
                }
                Raw::MySql(pool, t) => {
                    sqlx::query(&format!("DROP TABLE {t}"))
                        .execute(pool)
                        .await?;
                }
                Raw::Redis(..) | Raw::Sqlite(..) => {}
            }
            Ok(())
        }
    }
}

fn main() -> Result<(), BoxError> {
    let o = options()?;
    let runtime = match o.runtime.as_str() {
        "current-thread" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        "multi-thread" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        other => return Err(format!("--runtime current-thread|multi-thread, not {other}").into()),
    };
    runtime.block_on(async {
        let lines = match o.bench.as_str() {
            "throughput" => vec![throughput(&o).await?],
            "writes" => writes(&o).await?,
            "store" => vec![store_bench(&o).await?],
            "allocs" => vec![allocs(&o).await?],
            other => return Err(format!("--bench throughput|writes|store, not {other}").into()),
        };
        for line in lines {
            println!("{line}");
        }
        Ok(())
    })
}
