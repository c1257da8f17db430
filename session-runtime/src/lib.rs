//! Runtime of [typed-session](https://docs.rs/typed-session): the context, the middleware
//! chain, the live sessions, the session middleware, the stores and the integrations.
//!
//! Use it through the `typed-session` crate, which re-exports everything here together with
//! `#[derive(Session)]`. How the modules fit together is in the repository's
//! `ARCHITECTURE.md`: data flows one way, integrations → middleware and lifecycle → live
//! sessions → store.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod chain;
mod clock;
mod config;
mod context;
mod erasure;
mod error;
mod inline_key;
mod integrations;
mod key;
mod lifecycle;
mod live;
mod middleware;
pub mod schema;
mod session;
mod stats;
pub mod store;

pub use chain::{Chain, Middleware, Next};
pub use config::{ConfigError, ErrorPolicy, Freshness, Renewal, SaveFailurePolicy, StalePolicy};
pub use context::Context;
pub use erasure::{EraseFuture, EraseUser, Erased, ErasedSession, Erasure};
pub use error::{BoxError, FlushError, SessionError, SessionKey, StoreError, StoreOp};
pub use integrations::telegram;
pub use key::{KeyKind, KeyStrategy, UpdateKeys};
pub use lifecycle::LazySession;
pub use middleware::{SessionBuilder, SessionMiddleware};
pub use session::Session;
pub use stats::Stats;
pub use store::{MemoryStore, Store};

#[cfg(feature = "teloxide")]
#[cfg_attr(docsrs, doc(cfg(feature = "teloxide")))]
pub use integrations::dispatching;
#[cfg(feature = "polling")]
#[cfg_attr(docsrs, doc(cfg(feature = "polling")))]
pub use integrations::polling::{self, Polling, PollingError};
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub use integrations::testing;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use integrations::tower::{SessionLayer, SessionService};
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub use integrations::webhook::{self, Webhook};
#[cfg(feature = "mongodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongodb")))]
pub use store::MongoStore;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use store::MySqlStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::SqliteStore;

// Driver and framework crates whose types cross our API (a pool, client or connection you
// pass in, a router or handler you get back). Each ties you to one major version: name them
// through these re-exports and yours and ours cannot drift apart.

/// teloxide-core 0.13, whose `types::Update` implements [`UpdateKeys`].
#[cfg(feature = "telegram")]
#[cfg_attr(docsrs, doc(cfg(feature = "telegram")))]
pub use teloxide_core;

/// dptree 0.5, whose handlers [`dispatching::attach`] and [`dispatching::load`] build
/// (teloxide 0.17 uses it).
#[cfg(feature = "teloxide")]
#[cfg_attr(docsrs, doc(cfg(feature = "teloxide")))]
pub use dptree;

/// http 1, for the requests [`SessionLayer`] wraps and the [`KeyStrategy`]s that read them.
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use http;

/// axum 0.8: the framework the `axum` feature's extractor is for, and `Webhook::router`'s.
#[cfg(any(feature = "axum", feature = "webhook", feature = "testing"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "axum", feature = "webhook", feature = "testing")))
)]
pub use axum;

/// sqlx 0.8, for pools to pass to [`PostgresStore`] and [`MySqlStore`].
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "mysql"))))]
pub use sqlx;

/// rusqlite 0.32, for connections to pass to [`SqliteStore`].
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use rusqlite;

/// redis 1, for connections to pass to [`RedisStore`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;

/// mongodb 3, for clients to pass to [`MongoStore`].
#[cfg(feature = "mongodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongodb")))]
pub use mongodb;

/// Emits the items it wraps when the `axum` feature is on (the derive's extractor impl for the
/// typed handle), and nothing otherwise: the derive cannot see this crate's features.
#[cfg(feature = "axum")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_axum {
    ($($item:tt)*) => { $($item)* };
}

/// Without the `axum` feature, the extractor impl the derive asks for is not emitted.
#[cfg(not(feature = "axum"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_axum {
    ($($item:tt)*) => {};
}

/// Items the derive's generated code names. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::config::Renewal;
    pub use crate::context::Context;
    pub use crate::error::SessionError;
    pub use crate::key::KeyKind;
    pub use crate::live::SessionRef;
    pub use crate::schema::{FieldSpec, MigrationStep, Schema};
    pub use crate::session::Session;
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

    /// What a setter takes for a field of type `T`: a `T`, or a value that reads better and
    /// converts without loss (`set_lang("de")` for a `String` field). Deliberately not every
    /// `Into<T>`: with a blanket impl, `set_count(5)` on a `u64` field could not infer `5`.
    #[diagnostic::on_unimplemented(
        message = "a setter of a `{T}` field cannot take a `{Self}`",
        label = "expected a `{T}` here",
        note = "pass a `{T}` (setters take the field's own type, and `&str` for `String` fields)"
    )]
    pub trait IntoField<T> {
        /// The field's value.
        fn into_field(self) -> T;
    }

    impl<T> IntoField<T> for T {
        #[inline]
        fn into_field(self) -> T {
            self
        }
    }

    impl IntoField<String> for &str {
        #[inline]
        fn into_field(self) -> String {
            self.to_owned()
        }
    }

    impl IntoField<Option<String>> for &str {
        #[inline]
        fn into_field(self) -> Option<String> {
            Some(self.to_owned())
        }
    }

    #[cfg(feature = "axum")]
    pub use crate::integrations::axum::extract_handle;
    #[cfg(feature = "axum")]
    pub use axum::extract::FromRequestParts;
    #[cfg(feature = "axum")]
    pub use http::request::Parts;

    pub use crate::__if_axum as if_axum;

    /// The error of the per-field codec.
    pub type CodecError = serde_json::Error;

    /// What encoding a stored field needs, with a message that says what to do.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be stored in a session: it does not implement `serde::Serialize`",
        label = "the type of a persisted session field",
        note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}`, or mark the field `#[session(skip)]` to keep it out of the store"
    )]
    pub trait EncodeField: serde::Serialize {}

    impl<T: serde::Serialize> EncodeField for T {}

    /// What decoding a stored field needs, with a message that says what to do.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be loaded from a session: it does not implement `serde::Deserialize`",
        label = "the type of a persisted session field",
        note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}`, or mark the field `#[session(skip)]` to keep it out of the store"
    )]
    pub trait DecodeField: serde::de::DeserializeOwned {}

    impl<T: serde::de::DeserializeOwned> DecodeField for T {}

    /// Encodes one field into `out`, in its buffer.
    #[inline]
    pub fn encode_into<T: EncodeField>(
        value: &T,
        out: &mut String,
    ) -> Result<(), serde_json::Error> {
        let mut bytes = std::mem::take(out).into_bytes();
        bytes.clear();
        if bytes.capacity() == 0 {
            // What `serde_json::to_string` starts with: most values need no growing then.
            bytes.reserve(128);
        }
        serde_json::to_writer(&mut bytes, value)?;
        // `serde_json` writes UTF-8 only; the check is what spares an `unsafe` here.
        *out =
            String::from_utf8(bytes).map_err(<serde_json::Error as serde::ser::Error>::custom)?;
        Ok(())
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
