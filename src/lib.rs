//! Typed, race-safe, field-level sessions for Rust bots.
//!
//! ```
//! use typed_session::telegram::Update;
//! use typed_session::{Chain, MemoryStore, Session, SessionMiddleware};
//!
//! #[derive(Session)]
//! struct Profile {
//!     #[default(0)]
//!     count: u64,
//!     #[default(String::from("en"))]
//!     lang: String,
//!     last_seen: Option<i64>, // no #[default]: Default::default()
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let chain = Chain::new()
//!     .with(SessionMiddleware::<Profile, Update>::new(store.clone()))
//!     .handler(|ctx| Box::pin(async move {
//!         let session = ctx.session().await?;
//!         session.update_count(|c| *c += 1);
//!         println!("{} said hi {} times", session.lang(), session.count());
//!         Ok(())
//!     }));
//! chain.run_update(Update::text(1, 42, 42, "hi")).await?;
//! // Only the field that changed was written; `lang` and `last_seen` are still defaults.
//! // It is stored under the type's namespace: `"Profile:42:42"`.
//! assert_eq!(store.raw("Profile:42:42").unwrap().len(), 1);
//! # Ok::<(), typed_session::BoxError>(())
//! # }).unwrap();
//! ```
//!
//! # The derive
//!
//! `#[derive(Session)]` on a struct with named fields generates:
//!
//! * `Default`, from each field's `#[default(expr)]` or `Default::default()` (do not derive
//!   `Default` as well);
//! * the [`Session`] impl (and its [`schema::Schema`]): the field names and a serde_json codec
//!   per stored field, so the runtime can write one field alone;
//! * `{Name}Handle<'_>`, with per field: a getter (for `Clone` types), `with_x(|&x| ..)`,
//!   `set_x(v)` (a `String` field also takes a `&str`), `update_x(|&mut x| ..)` and
//!   `reset_x()`; plus `snapshot()`, `replace(v)`, `clear()` and `key()`;
//! * `{Name}Access`, a trait that adds the accessor (`ctx.session()`) to [`Context`];
//! * with the `axum` feature, an extractor impl for `{Name}Handle<'static>`, so an axum
//!   handler takes the loaded session as an argument.
//!
//! Attributes on the struct, in `#[session(...)]`: `accessor = "name"` (the context method,
//! default `session`), `key = "user_in_chat" | "chat" | "user"`, `ttl = 3600` or
//! `ttl = "30d"` (sliding expiry), `renewal = "on_access"` (reads renew the expiry too; the
//! default renews on writes, see [`Renewal`]), `migrations = [step, ..]` (versioned
//! migrations of stored records, see [`schema::Migration`]), `crate = "path"` (where `typed_session` is, for re-exports).
//! On a field: `rename = "stored"` (the stored name; rename a field in code and keep reading
//! old data), `skip` (not saved; lives only while the session is live),
//! `reset_on_error` (a stored value that no longer decodes falls back to the default instead
//! of failing the load).
//!
//! # Integrations
//!
//! Each behind a cargo feature (all off by default):
//!
//! * `webhook`: [`Webhook`], an axum server for Telegram's webhook that answers only after the
//!   update's sessions are saved, optionally with a webhook reply;
//! * `polling`: [`Polling`], a `getUpdates` loop that confirms an update to Telegram only after
//!   its sessions are saved;
//! * `teloxide`: [`SessionMiddleware::attach`] and [`SessionMiddleware::load`], dptree
//!   handlers that give a teloxide dispatcher's handlers the session and save after them
//!   (see [`dispatching`]; handlers may return teloxide's `ResponseResult<()>`);
//! * `telegram` (included in `teloxide`): [`UpdateKeys`] for teloxide-core's `Update`
//!   (see [`telegram`]);
//! * `tower`: [`SessionLayer`], the middleware as a tower `Layer` over `http` requests;
//! * `axum` (includes `tower`): the derive's `{Name}Handle<'static>` and [`LazySession`] as
//!   extractors, and [`SessionError`] as a response (a status per kind);
//! * `testing`: [`testing::BotApiDouble`], a test double of the Telegram Bot API, to run a bot
//!   offline in tests.
//! * `metrics`: what [`Stats`] counts, and load and save latencies, through the `metrics`
//!   facade ([`guide::observability`] lists them).
//!
//! Stores: `sqlite`, `postgres`, `mysql`, `redis`, `mongodb` (see [`store`]).
//!
//! # Where things are
//!
//! The crate root holds what a bot names: the derive and [`Session`], [`Chain`],
//! [`Context`], [`SessionMiddleware`] and its policies, [`KeyStrategy`], the errors, the stores and
//! the integrations. Beside it: [`telegram`] (a small Telegram update type, and keys for
//! teloxide-core's), [`store`] (the [`Store`] contract: [`store::Patch`], [`store::Record`],
//! [`store::StoreFuture`], for writing a store), [`chain`] ([`chain::ChainFuture`], for
//! writing a middleware), [`schema`] (what the derive implements, for implementing
//! [`Session`] by hand), and [`dispatching`] (teloxide). Driver crates whose types cross the
//! API (a pool or client you pass in) are re-exported under their own names, each at the one
//! major version this release supports.
//!
//! # What is guaranteed
//!
//! [`guide::guarantees`] has the table, row by row against Telegraf. In short: no write on read, no write of unchanged or untouched
//! fields, one patch of only the changed fields per update, no lost update between concurrent
//! updates of one key in a process, and none between processes either: every stored field has
//! a version, and a write based on an older value than the store holds is refused
//! ([`SessionError::Conflict`]) and the update runs again on the newer one. A save that fails
//! takes the update's writes back so that its redelivery applies it once ([`SaveFailurePolicy`]); a
//! delivery of an update already saved is recognised by its id and not applied again
//! ([`SessionBuilder::recognize_redelivery`]); a stale `set_*` is refused and retried
//! ([`StalePolicy`]); [`SessionBuilder::exclusive`] runs one update per key at a time. Two
//! session types on one store never share a record (each has its namespace). Whether an update
//! must run again is [`Context::must_retry`]; the webhook and the poller do it for you.
//!
//! # The guide
//!
//! The manual is [`guide`]: one chapter per module (stores, the derive, each runner, several
//! writers, what it reports, erasure, running in production), every example in it compiled
//! and tested with the crate.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod guide;

pub use typed_session_macros::Session;
pub use typed_session_runtime::*;
