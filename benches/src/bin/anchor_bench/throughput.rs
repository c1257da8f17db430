//! Part A: throughput on the memory store.

use std::sync::Arc;

use serde_json::json;
use typed_session::{BoxError, MemoryStore};

use crate::chains::{baseline_chain, count_chain};
use crate::meter::{measure, median, peak_rss_mb, r3};
use crate::options::Options;
use crate::workload::{feed, user_sequence};

pub(crate) async fn throughput(o: &Options) -> Result<serde_json::Value, BoxError> {
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
