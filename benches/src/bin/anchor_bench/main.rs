//! The anchors' workloads (`../shared/anchors`), reproduced for typed-session, printing one
//! JSON line per measurement in the anchors' schema so `summarize.js` reads both.
//!
//! ```sh
//! # A: throughput on the memory store (one config per process, like the anchors)
//! cargo run --release -p typed-session-bench --bin anchor_bench -- --workload seq --variant session --runtime current-thread
//! # C: store traffic per update, 20-field session, scenarios write1 / read / none
//! cargo run --release -p typed-session-bench --bin anchor_bench -- --bench writes
//! # D-like: the full middleware on a persistent store, sequential (`--variant cached`:
//! `Freshness::Cached`; `--variant leased`/`leased-kept`: exclusive mode across processes, the
//! lease claimed per update or kept between them; `--variant raw`: the driver alone)
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

mod allocs;
mod chains;
mod meter;
mod options;
mod stores;
mod throughput;
mod workload;
mod writes;

use typed_session::BoxError;

use crate::allocs::allocs;
use crate::options::options;
use crate::stores::store_bench;
use crate::throughput::throughput;
use crate::writes::writes;

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
