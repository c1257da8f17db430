//! [`Schema`]: how a session type is stored, field by field. The derive implements it; the
//! live layer reads and writes sessions only through it.

use std::time::Duration;

use crate::config::Renewal;
use crate::key::KeyKind;

/// A stored field of a session type, as the derive describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldSpec {
    /// The name the field is stored under (`#[session(rename = "...")]`, else the Rust name).
    pub name: &'static str,
    /// Whether a stored value that fails to decode falls back to the default
    /// (`#[session(reset_on_error)]`) instead of failing the load.
    pub reset_on_error: bool,
}

impl FieldSpec {
    /// A field stored under `name`, whose undecodable stored value fails the load unless
    /// `reset_on_error` (for a [`Schema`] implemented by hand; the derive calls it too).
    pub const fn new(name: &'static str, reset_on_error: bool) -> Self {
        FieldSpec {
            name,
            reset_on_error,
        }
    }
}

/// The stored shape of a session type: its stored fields and a codec for each.
///
/// Implemented by `#[derive(Session)]`, together with [`Session`](crate::Session), which adds
/// the typed handle. Stored fields are numbered `0..FIELDS.len()` in declaration order
/// (skipped fields have no number). The runtime reads and writes them one at a time through
/// these methods, which is what lets it save only the fields that changed.
pub trait Schema: Default + Send + Sync + 'static {
    /// The type's name, for messages.
    const NAME: &'static str;

    /// The stored fields, in index order.
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

    /// The steps that bring a stored record up to this type's shape, oldest first
    /// (`#[session(migrations = [..])]`): step `n` turns a record of version `n` into one of
    /// version `n + 1`, and the type's version is their number. See [`Migration`].
    const MIGRATIONS: &'static [MigrationStep] = &[];

    /// Encodes stored field `index` of `self`.
    fn encode_field(&self, index: usize) -> Result<String, serde_json::Error> {
        let mut out = String::with_capacity(128);
        self.encode_field_into(index, &mut out)?;
        Ok(out)
    }

    /// Encodes stored field `index` of `self` into `out`, replacing what it held and reusing
    /// its buffer: the runtime hands in the text of a value the store no longer holds, so a
    /// steady stream of writes allocates nothing here.
    fn encode_field_into(&self, index: usize, out: &mut String) -> Result<(), serde_json::Error>;

    /// Decodes `raw` into stored field `index` of `self`.
    fn decode_field(&mut self, index: usize, raw: &str) -> Result<(), serde_json::Error>;

    /// Sets stored field `index` of `self` back to its default value.
    fn reset_field(&mut self, index: usize);
}

/// One step of a session type's migrations: it turns a stored record of one version into one
/// of the next.
pub type MigrationStep = fn(&mut Migration<'_>) -> Result<(), MigrationError>;

/// The name of the reserved field that holds a record's schema version (absent: version 0).
pub(crate) const VERSION_FIELD: &str = "@version";

/// A stored record as one [`MigrationStep`] sees it: its fields by stored name, as JSON, to be
/// read with their old types and written with their new ones.
///
/// A record is migrated when it is loaded, before its fields are decoded, from the version it
/// carries (none: version 0) to the type's. The fields the steps changed are written back with
/// the update's patch, field by field, together with the record's new version, once: a record
/// at the type's version is not migrated again. Every record the type writes carries its
/// version, so a new session is never taken for an old one.
///
/// ```
/// use std::time::Duration;
/// use typed_session::schema::{Migration, MigrationError};
/// use typed_session::Session;
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone, Default, PartialEq, Debug)]
/// enum Lang { #[default] En, De }
///
/// #[derive(Session)]
/// #[session(migrations = [Prefs::lang_as_enum, Prefs::timeout_in_millis])]
/// struct Prefs {
///     lang: Lang,
///     /// In milliseconds (version 1 stored seconds).
///     timeout: u64,
/// }
///
/// impl Prefs {
///     /// Version 0 stored the language as a code.
///     fn lang_as_enum(record: &mut Migration<'_>) -> Result<(), MigrationError> {
///         record.try_map("lang", |code: String| match code.as_str() {
///             "en" => Ok(Lang::En),
///             "de" => Ok(Lang::De),
///             other => Err(format!("unknown language code {other:?}")),
///         })
///     }
///
///     fn timeout_in_millis(record: &mut Migration<'_>) -> Result<(), MigrationError> {
///         record.map("timeout", |seconds: u64| seconds * 1000)
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Migration<'r> {
    fields: &'r mut std::collections::HashMap<String, String>,
    changed: &'r mut Vec<String>,
    from: u32,
}

impl<'r> Migration<'r> {
    pub(crate) fn new(
        fields: &'r mut std::collections::HashMap<String, String>,
        changed: &'r mut Vec<String>,
        from: u32,
    ) -> Self {
        Migration {
            fields,
            changed,
            from,
        }
    }

    /// The version this step migrates from (0 for records written before the type had
    /// migrations).
    pub fn from_version(&self) -> u32 {
        self.from
    }

    /// Whether the record holds `field`.
    pub fn contains(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }

    /// The value of `field`, decoded as a `T` (the field's old type); `None` when the record
    /// does not hold it.
    ///
    /// # Errors
    ///
    /// When the stored value is not a `T`.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        field: &str,
    ) -> Result<Option<T>, MigrationError> {
        self.fields
            .get(field)
            .map(|raw| serde_json::from_str(raw))
            .transpose()
            .map_err(|error| MigrationError::new(field, error))
    }

    /// Stores `value` as `field` (in the field's new type).
    ///
    /// # Errors
    ///
    /// When `value` does not encode to JSON.
    pub fn set<T: serde::Serialize>(
        &mut self,
        field: &str,
        value: &T,
    ) -> Result<(), MigrationError> {
        let raw =
            serde_json::to_string(value).map_err(|error| MigrationError::new(field, error))?;
        self.fields.insert(field.to_owned(), raw);
        self.changed.push(field.to_owned());
        Ok(())
    }

    /// Removes `field`: a field of the type then takes its default, and is removed from the
    /// store with the write-back.
    pub fn remove(&mut self, field: &str) {
        if self.fields.remove(field).is_some() {
            self.changed.push(field.to_owned());
        }
    }

    /// Moves the value of `from` to `to` (a field renamed in this version). The old name is
    /// not written back: it stays in the store, unread, until the session is cleared.
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(raw) = self.fields.remove(from) {
            self.fields.insert(to.to_owned(), raw);
            self.changed.push(to.to_owned());
        }
    }

    /// Replaces `field` by `convert` of its old value: reads it as an `Old`, stores the `New`
    /// that `convert` makes. A record without the field is left as it is.
    ///
    /// # Errors
    ///
    /// When the stored value is not an `Old`, or the `New` does not encode.
    pub fn map<Old, New>(
        &mut self,
        field: &str,
        convert: impl FnOnce(Old) -> New,
    ) -> Result<(), MigrationError>
    where
        Old: serde::de::DeserializeOwned,
        New: serde::Serialize,
    {
        self.try_map(field, |old| Ok::<_, std::convert::Infallible>(convert(old)))
    }

    /// Like [`map`](Self::map), for conversions that can fail: an `Err` fails the migration,
    /// and the load, with its message.
    ///
    /// # Errors
    ///
    /// When the stored value is not an `Old`, `convert` fails, or the `New` does not encode.
    pub fn try_map<Old, New, E>(
        &mut self,
        field: &str,
        convert: impl FnOnce(Old) -> Result<New, E>,
    ) -> Result<(), MigrationError>
    where
        Old: serde::de::DeserializeOwned,
        New: serde::Serialize,
        E: std::fmt::Display,
    {
        let Some(old) = self.get::<Old>(field)? else {
            return Ok(());
        };
        let new = convert(old).map_err(|error| MigrationError::new(field, error))?;
        self.set(field, &new)
    }
}

/// A migration step that could not migrate a record: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field:?}: {message}")]
pub struct MigrationError {
    field: String,
    message: String,
}

impl MigrationError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        MigrationError {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The stored name of the field the step failed on.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}
