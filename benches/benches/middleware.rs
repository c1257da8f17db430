//! Cost of the session middleware on the memory store, against the same chain without a
//! session: sequential updates, and batches of 1,000 concurrent updates with same-key
//! collisions (the anchors' workloads A/seq and A/conc, the benchmark section of BENCHMARKS.md).
//!
//! `cargo bench --bench middleware`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(Session)]
struct Visits {
    #[default(0)]
    count: u64,
}

const USERS: i64 = 10_000;

/// pass-through, increment, read: the anchors' three middlewares, with the "session" being a
/// shared counter.
fn baseline_chain(shared: Arc<AtomicU64>, sink: Arc<AtomicU64>) -> Chain<Update> {
    let incr = Arc::clone(&shared);
    Chain::new()
        .with_fn(|ctx, next| next.run(ctx))
        .with_fn(move |ctx, next| {
            incr.fetch_add(1, Ordering::Relaxed);
            next.run(ctx)
        })
        .handler(move |_ctx| {
            sink.fetch_add(shared.load(Ordering::Relaxed), Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        })
}

fn session_chain(sink: Arc<AtomicU64>) -> Chain<Update> {
    Chain::new()
        .with(SessionMiddleware::<Visits, Update>::new(MemoryStore::new()))
        .with_fn(|ctx, next| {
            Box::pin(async move {
                ctx.session().await?.update_count(|c| *c += 1);
                next.run(ctx).await
            })
        })
        .handler(move |ctx| {
            let sink = Arc::clone(&sink);
            Box::pin(async move {
                sink.fetch_add(ctx.session().await?.count(), Ordering::Relaxed);
                Ok(())
            })
        })
}

fn update(i: i64) -> Update {
    // Spread over USERS users; consecutive updates hit different users, as in a busy bot.
    let user = 1_000_000 + (i * 7919) % USERS;
    Update::text(i, user, user, "hi")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sink = Arc::new(AtomicU64::new(0));
    let chains = [
        (
            "baseline",
            Arc::new(baseline_chain(Arc::default(), Arc::clone(&sink))),
        ),
        ("session", Arc::new(session_chain(Arc::clone(&sink)))),
    ];

    let mut seq = c.benchmark_group("seq");
    seq.throughput(Throughput::Elements(1));
    for (name, chain) in &chains {
        let mut i = 0;
        seq.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| {
                i += 1;
                let chain = Arc::clone(chain);
                async move { chain.run_update(update(i)).await.expect("update succeeds") }
            })
        });
    }
    seq.finish();

    let mut conc = c.benchmark_group("conc1000");
    conc.throughput(Throughput::Elements(1000));
    conc.sample_size(20);
    for (name, chain) in &chains {
        let mut batch = 0;
        conc.bench_function(*name, |b| {
            b.to_async(&runtime).iter_batched(
                || {
                    batch += 1;
                    // 1,000 updates drawn from 950 users: ~50 same-key collisions per batch.
                    (0..1000)
                        .map(|i| update((batch * 1000 + i) % 950 + batch * 950))
                        .collect::<Vec<_>>()
                },
                |updates| {
                    let chain = Arc::clone(chain);
                    async move {
                        let tasks: Vec<_> = updates
                            .into_iter()
                            .map(|u| {
                                let chain = Arc::clone(&chain);
                                tokio::spawn(async move { chain.run_update(u).await })
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("no panic").expect("update succeeds");
                        }
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    conc.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
