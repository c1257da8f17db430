//! Part C: store traffic per update, with a 20-field session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use typed_session::schema::Schema;
use typed_session::telegram::Update;
use typed_session::{BoxError, Chain, MemoryStore, Session, SessionMiddleware};

use crate::chains::{Counted, SINK};
use crate::options::Options;
use crate::workload::{feed, user_sequence};

#[derive(Session)]
#[session(accessor = "wide")]
pub(crate) struct Wide {
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

pub(crate) fn wide_chain(store: Arc<Counted<MemoryStore>>, scenario: &str) -> Chain<Update> {
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

pub(crate) async fn writes(o: &Options) -> Result<Vec<serde_json::Value>, BoxError> {
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
