//! A bot that logs with the `log` crate (env_logger, as teloxide's examples do) and installs no
//! `tracing` subscriber still sees what the crate reports: its events reach `log`.
//!
//! It lives in this crate, whose build has no store drivers, because sqlx turns on `tracing`'s
//! `log` bridge too: in a build with it, this test would pass whatever typed-session declares.
//! `.ci/run` runs it on its own (`cargo test -p ui-tests --test log_bridge`), so that only this
//! crate's dependencies decide.

use std::sync::Mutex;

use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};

#[derive(Session)]
struct Counter {
    count: u64,
}

/// A `log` logger that keeps what it is given (no `tracing` subscriber in this test binary).
struct Kept(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Kept {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut kept) = self.0.lock() {
            kept.push((record.level(), record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

static KEPT: Kept = Kept(Mutex::new(Vec::new()));

#[tokio::test]
async fn events_reach_a_log_logger_when_no_tracing_subscriber_is_installed() {
    log::set_logger(&KEPT).expect("the only logger of this binary");
    log::set_max_level(log::LevelFilter::Trace);

    let sessions = SessionMiddleware::<Counter, Update>::new(MemoryStore::new());
    let chain = Chain::new().with(sessions.clone()).handler(|ctx| {
        Box::pin(async move {
            ctx.session().await?.update_count(|c| *c += 1);
            Ok(())
        })
    });
    for _ in 0..2 {
        // The second delivery is recognised, and says so at info level.
        chain
            .run_update(Update::text(41, 7, 7, "+1"))
            .await
            .expect("handled");
    }

    let kept = KEPT.0.lock().expect("not poisoned");
    assert!(
        kept.iter()
            .any(|(level, message)| *level == log::Level::Info
                && message.contains("a delivery of an update whose writes are saved already")),
        "{kept:?}"
    );
    // The save's span too: it is made when a logger takes debug output.
    assert!(
        kept.iter()
            .any(|(level, message)| *level == log::Level::Debug && message.contains("session.save")),
        "{kept:?}"
    );
}
