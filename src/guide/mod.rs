//! The manual: one chapter per module, each with examples that compile (and, where they need
//! no server or network, run) as the crate's documentation tests.
//!
//! Start with the crate's front page for the derive and a first bot; then, in the order a bot
//! usually meets them:
//!
//! * [`stores`]: where sessions live, the URL of each store, its options and deadlines;
//! * [`derive`](mod@derive): every attribute of `#[derive(Session)]`, migrations and expiry;
//! * [`webhook`], [`polling`], [`teloxide`], [`http`]: the runners a bot's updates come
//!   through, and what each one guarantees about the save;
//! * [`testing`]: running a bot offline against a test double of the Bot API;
//! * [`writers`]: several writers on one session (replicas, admin tools, concurrent updates),
//!   exactly once, and the modes that trade concurrency for simplicity;
//! * [`observability`]: what the crate reports through `tracing` and `metrics`;
//! * [`erasure`]: erasing a user's sessions, listing them, and the `typed-session` tool;
//! * [`production`]: what an acknowledged update survives, store by fault, and an operator's
//!   checklist;
//! * [`guarantees`]: Telegraf's `session()` and this crate, row by row.
//!
//! How the code is laid out and which module keeps which guarantee is in the repository's
//! `ARCHITECTURE.md`; every benchmark row, and the command behind it, in `BENCHMARKS.md`.

#[doc = include_str!("stores.md")]
pub mod stores {}

#[doc = include_str!("derive.md")]
pub mod derive {}

#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
#[doc = include_str!("webhook.md")]
pub mod webhook {}

#[cfg(feature = "polling")]
#[cfg_attr(docsrs, doc(cfg(feature = "polling")))]
#[doc = include_str!("polling.md")]
pub mod polling {}

#[cfg(feature = "teloxide")]
#[cfg_attr(docsrs, doc(cfg(feature = "teloxide")))]
#[doc = include_str!("teloxide.md")]
pub mod teloxide {}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[doc = include_str!("http.md")]
pub mod http {}

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
#[doc = include_str!("testing.md")]
pub mod testing {}

#[doc = include_str!("writers.md")]
pub mod writers {}

#[doc = include_str!("observability.md")]
pub mod observability {}

#[doc = include_str!("erasure.md")]
pub mod erasure {}

#[doc = include_str!("production.md")]
pub mod production {}

#[doc = include_str!("guarantees.md")]
pub mod guarantees {}
