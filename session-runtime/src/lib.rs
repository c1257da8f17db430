//! Runtime of [typed-session](https://docs.rs/typed-session): the context, the middleware
//! chain, the live-session registry, the session middleware and the stores.
//!
//! Use it through the `typed-session` crate, which re-exports everything here together with
//! `#[derive(Session)]`.

#![warn(missing_docs)]

mod chain;
mod context;
mod error;
mod handle;
mod key;
#[cfg(feature = "tower")]
mod layer;
mod middleware;
#[cfg(feature = "polling")]
mod polling;
mod registry;
mod session;
pub mod store;
#[cfg(feature = "telegram")]
mod telegram;
#[cfg(feature = "teloxide")]
pub mod teloxide;
pub mod update;
#[cfg(feature = "webhook")]
mod webhook;

pub use chain::{Chain, ChainFuture, FnMiddleware, Handler, Middleware, Next};
pub use context::Context;
pub use error::{BoxError, SessionError, StoreError, StoreOp};
pub use handle::{LazySession, SessionRef};
pub use key::{Key, KeyKind, UpdateKeys};
#[cfg(feature = "tower")]
pub use layer::{SessionLayer, SessionService};
pub use middleware::{ErrorPolicy, SessionBuilder, SessionMiddleware, StalePolicy, Stats};
#[cfg(feature = "polling")]
pub use polling::{Polling, PollingError};
pub use session::{FieldSpec, Session};
#[cfg(feature = "mongodb")]
pub use store::MongoStore;
#[cfg(feature = "mysql")]
pub use store::MySqlStore;
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{BoxFuture, MemoryStore, Patch, Record, Store, StoreFuture};
pub use update::Update;
#[cfg(feature = "webhook")]
pub use webhook::Webhook;

/// The teloxide-core this crate links: its `types::Update` implements [`UpdateKeys`].
#[cfg(feature = "telegram")]
pub use teloxide_core;

/// The `dptree` this crate links, whose handlers [`teloxide::attach`] builds.
#[cfg(feature = "teloxide")]
pub use dptree;

/// The `http` crate this crate links, for the request types [`SessionLayer`] wraps.
#[cfg(feature = "tower")]
pub use http;

/// The `axum` this crate links, for merging [`Webhook::router`] into an app.
#[cfg(feature = "webhook")]
pub use axum;

/// The `sqlx` this crate links, for pools to pass to [`PostgresStore`] and [`MySqlStore`].
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use sqlx;

/// The `rusqlite` this crate links, for connections to pass to [`SqliteStore`].
#[cfg(feature = "sqlite")]
pub use rusqlite;

/// The `redis` crate this crate links, for connections to pass to [`RedisStore`].
#[cfg(feature = "redis")]
pub use redis;

/// The `mongodb` crate this crate links, for clients to pass to [`MongoStore`].
#[cfg(feature = "mongodb")]
pub use mongodb;

/// Items the derive's generated code names. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::Context;
    pub use crate::error::SessionError;
    pub use crate::handle::SessionRef;
    pub use crate::key::KeyKind;
    pub use crate::session::{FieldSpec, Session};
    pub use core::time::Duration;
    pub use serde;

    /// What a field's copying getter needs: `Clone`, with a message that names the way out.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not `Clone`, so this getter cannot return a copy of the field",
        label = "getter of a field whose type is not `Clone`",
        note = "borrow the field with its `with_<field>(|value| ...)` method instead, or derive `Clone` for `{Self}`"
    )]
    pub trait CloneField: Clone {}

    impl<T: Clone> CloneField for T {}

    /// The error of the per-field codec.
    pub type CodecError = serde_json::Error;

    /// What encoding a persisted field needs, with a message that says what to do.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be stored in a session: it does not implement `serde::Serialize`",
        label = "the type of a persisted session field",
        note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}`, or mark the field `#[session(skip)]` to keep it out of the store"
    )]
    pub trait EncodeField: serde::Serialize {}

    impl<T: serde::Serialize> EncodeField for T {}

    /// What decoding a persisted field needs, with a message that says what to do.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be loaded from a session: it does not implement `serde::Deserialize`",
        label = "the type of a persisted session field",
        note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}`, or mark the field `#[session(skip)]` to keep it out of the store"
    )]
    pub trait DecodeField: serde::de::DeserializeOwned {}

    impl<T: serde::de::DeserializeOwned> DecodeField for T {}

    /// Encodes one field.
    #[inline]
    pub fn encode<T: EncodeField>(value: &T) -> Result<String, serde_json::Error> {
        serde_json::to_string(value)
    }

    /// Decodes one field.
    #[inline]
    pub fn decode<T: DecodeField>(raw: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(raw)
    }

    /// The error for a field index the type does not have (never produced by the derive).
    pub fn no_such_field(index: usize) -> serde_json::Error {
        <serde_json::Error as serde::de::Error>::custom(format_args!(
            "no persisted field number {index}"
        ))
    }
}
