//! [`Record`]: a stored session as the stores read and write it.

use std::collections::HashMap;

/// A stored session: its fields (stored name to encoded value, JSON text) and the version of
/// each field the store has written.
///
/// A field's version starts at 0 (never written) and every write of the field, set or
/// removal, adds one; a removed field keeps its version. Deleting the record forgets them.
/// Versions are what makes writes conditional (see [`Patch::expect_version`](super::Patch::expect_version)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The fields, by stored name.
    pub fields: HashMap<String, String>,
    /// The version of each field written so far (removed ones included); absent means 0.
    pub versions: HashMap<String, u64>,
    /// The update that last wrote each field, where the write named one (Telegram's
    /// `update_id`): how a delivery of an update already saved is recognised.
    pub writers: HashMap<String, i64>,
}

impl Record {
    /// The encoded value of `field`, if the record holds it.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// The version of `field`: 0 when it was never written.
    pub fn version(&self, field: &str) -> u64 {
        self.versions.get(field).copied().unwrap_or(0)
    }

    /// Takes the encoded value of `field` out of the record.
    pub fn remove(&mut self, field: &str) -> Option<String> {
        self.fields.remove(field)
    }

    /// The number of fields held.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the record holds no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl std::ops::Index<&str> for Record {
    type Output = String;

    /// The encoded value of `field`.
    ///
    /// # Panics
    ///
    /// When the record does not hold `field` (use [`Record::get`] otherwise).
    fn index(&self, field: &str) -> &String {
        &self.fields[field]
    }
}

impl IntoIterator for Record {
    type Item = (String, String);
    type IntoIter = std::collections::hash_map::IntoIter<String, String>;

    /// The fields, by stored name.
    fn into_iter(self) -> Self::IntoIter {
        self.fields.into_iter()
    }
}

impl FromIterator<(String, String)> for Record {
    /// A record of these fields, with no versions.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(fields: I) -> Self {
        Record {
            fields: fields.into_iter().collect(),
            versions: HashMap::new(),
            writers: HashMap::new(),
        }
    }
}
