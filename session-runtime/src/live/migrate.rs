//! Versioned migrations of stored records (ARCHITECTURE.md, "Schema evolution"): a record is
//! brought to its session type's version as it is loaded, and what changed is written back with
//! the update's patch, with the record's new version.

use crate::error::{SessionError, SessionKey};
use crate::schema::{Migration, Schema, VERSION_FIELD};
use crate::store::Record;

/// The schema version a record carries, and the store's version of that reserved field (what
/// a patch that changes it expects).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) version: u32,
    pub(crate) counter: u64,
}

impl Mark {
    /// The mark of `record`, as session type `S` reads it: a type without migrations neither
    /// reads nor writes a version, so it costs nothing to ask.
    pub(crate) fn of<S: Schema>(record: &Record) -> Self {
        if version::<S>() == 0 {
            return Mark::default();
        }
        Mark {
            version: record
                .get(VERSION_FIELD)
                .and_then(|raw| raw.trim().parse().ok())
                .unwrap_or(0),
            counter: record.version(VERSION_FIELD),
        }
    }
}

/// The version of session type `S`: the number of its migration steps.
pub(crate) fn version<S: Schema>() -> u32 {
    u32::try_from(S::MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Runs the steps that bring `record` from the version it carries to `S`'s. Returns each field
/// a step set or removed, with what the store held of it before, in the order they changed.
///
/// A record from a newer version of the type (a rollback) is left as it is, with a warning.
pub(crate) fn migrate<S: Schema>(
    key: &str,
    record: &mut Record,
) -> Result<Vec<(String, Option<String>)>, Box<SessionError>> {
    let to = version::<S>();
    if to == 0 {
        return Ok(Vec::new());
    }
    let from = Mark::of::<S>(record).version;
    if from == to {
        return Ok(Vec::new());
    }
    if from > to {
        tracing::warn!(
            session = S::NAME,
            key,
            stored = from,
            known = to,
            "the stored record is of a newer version of this session type; loading it as it is"
        );
        return Ok(Vec::new());
    }
    let before = record.fields.clone();
    let mut changed = Vec::new();
    for (step, at) in S::MIGRATIONS[from as usize..].iter().zip(from..) {
        let mut migration = Migration::new(&mut record.fields, &mut changed, at);
        step(&mut migration).map_err(|error| {
            Box::new(SessionError::Migrate {
                session: S::NAME,
                key: SessionKey::of_stored(key, S::NAMESPACE),
                version: at,
                source: Box::new(error),
            })
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    changed.retain(|name| seen.insert(name.clone()));
    if from < to {
        tracing::info!(
            session = S::NAME,
            key,
            from,
            to,
            fields = ?changed,
            "migrated a stored record; it is written back with this update"
        );
    }
    Ok(changed
        .into_iter()
        .map(|name| {
            let original = before.get(&name).cloned();
            (name, original)
        })
        .collect())
}
