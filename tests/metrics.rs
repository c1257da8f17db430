//! The `metrics` feature: what `Stats` counts also reaches the `metrics` facade, labelled with
//! the session type, with load and persist latencies; rendered here by the Prometheus
//! exporter's recorder, installed as the process's recorder (this file is a process of its own).
#![cfg(feature = "metrics")]

mod common;

use std::sync::Arc;

use common::{Counter, ProbeStore, incrementing};
use metrics_exporter_prometheus::PrometheusBuilder;
use typed_session::telegram::Update;
use typed_session::{MemoryStore, SaveFailurePolicy, SessionMiddleware};

/// The value of the sample `name{session="Counter"}` in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{session=\"Counter\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn counts_and_latencies_reach_the_metrics_facade_labelled_with_the_session_type() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");

    let probe = ProbeStore::new(MemoryStore::new());
    let sessions = SessionMiddleware::<Counter, Update>::builder(Arc::clone(&probe))
        .on_save_failure(SaveFailurePolicy::Keep)
        .build();
    let chain = incrementing(&sessions);
    for id in 1..=3 {
        chain
            .run_update(Update::text(id, 7, 7, "+1"))
            .await
            .expect("saved");
    }
    probe.fail_next_applies(1);
    chain
        .run_update(Update::text(4, 8, 8, "+1"))
        .await
        .expect_err("the store failed the save");

    let text = handle.render();
    assert_eq!(
        sample(&text, "typed_session_loads_total"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "typed_session_writes_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "typed_session_failed_saves_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "typed_session_bytes_written_total"),
        Some(sessions.stats().bytes_written() as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "typed_session_load_seconds_count"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "typed_session_save_seconds_count"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sessions.stats().failed_saves(), 1);
}
