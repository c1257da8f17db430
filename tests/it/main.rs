//! The integration tests, one module per subject, in one test binary: the crate is linked once
//! for all of them instead of once per file.
//!
//! Four suites stay binaries of their own: `metrics` installs a process-wide recorder, and
//! `exactly_once`, `cluster_failover` and `pg_failover` are run by name, with their own
//! settings, by `.ci/run` and `scripts/failover-runs.sh`. Run one module here with
//! `cargo test --all-features --test it <module>::`, e.g. `--test it webhook::`.

#[path = "../common/mod.rs"]
mod common;

mod axum_extractor;
mod concurrency;
mod conflicts;
mod decoded_sessions;
mod dirty_tracking;
mod faults;
mod keys;
mod lifecycle;
mod memory_store;
mod polling;
mod redelivery;
mod redis_mongo_stores;
mod schema;
mod sessions_side_by_side;
mod sql_stores;
mod sqlite_group_commit;
mod stale_and_late;
mod store_conformance;
mod telegram_keys;
mod teloxide_adapter;
mod tower_layer;
mod webhook;
