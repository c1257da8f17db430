//! [`Schema`]: how a session type is stored, field by field. The derive implements it; the
//! live layer reads and writes sessions only through it.

use std::time::Duration;

use crate::config::Renewal;
use crate::key::KeyKind;

/// A persisted field of a session type, as the derive describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The name the field is stored under (`#[session(rename = "...")]`, else the Rust name).
    pub name: &'static str,
    /// Whether a stored value that fails to decode falls back to the default
    /// (`#[session(reset_on_error)]`) instead of failing the load.
    pub reset_on_error: bool,
}

/// The stored shape of a session type: its persisted fields and a codec for each.
///
/// Implemented by `#[derive(Session)]`, together with [`Session`](crate::Session), which adds
/// the typed handle. Persisted fields are numbered `0..FIELDS.len()` in declaration order
/// (skipped fields have no number). The runtime reads and writes them one at a time through
/// these methods, which is what lets it persist only the fields that changed.
pub trait Schema: Default + Send + Sync + 'static {
    /// The type's name, for messages.
    const NAME: &'static str;

    /// The persisted fields, in index order.
    const FIELDS: &'static [FieldSpec];

    /// What sets this type's records apart in a store shared with other session types: a
    /// record is stored under `"{NAMESPACE}:{key}"`. The derive takes the struct's name, or
    /// `#[session(namespace = "...")]` (pin it before renaming the struct: a new name is a new
    /// namespace, and the records under the old one are no longer read).
    const NAMESPACE: &'static str = Self::NAME;

    /// The key strategy `#[session(key = "...")]` chose; `None` means user-in-chat.
    const KEY: Option<KeyKind> = None;

    /// The expiry `#[session(ttl = "...")]` chose; sliding on every write.
    const TTL: Option<Duration> = None;

    /// What renews the expiry, `#[session(renewal = "on_access")]` or on write (the default).
    const RENEWAL: Renewal = Renewal::OnWrite;

    /// Encodes persisted field `index` of `self`.
    fn encode_field(&self, index: usize) -> Result<String, serde_json::Error>;

    /// Decodes `raw` into persisted field `index` of `self`.
    fn decode_field(&mut self, index: usize, raw: &str) -> Result<(), serde_json::Error>;

    /// Sets persisted field `index` of `self` back to its default value.
    fn reset_field(&mut self, index: usize);
}
