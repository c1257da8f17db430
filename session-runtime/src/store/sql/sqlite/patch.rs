//! How [`SqliteStore`] writes a patch: one statement, conditional on the
//! versions the patch expects; written whole where the connection keeps the row's columns
//! (`revisions`), edited field by field otherwise, and in a transaction of its own when the
//! patch expects nothing of a field it writes.

use rusqlite::{Connection, OptionalExtension, ToSql, params_from_iter};

use super::revisions::{Columns, Expiry, Written};
use super::statements::{SetValue, Shape, is_json};
use super::{BACKEND, SqliteStore, error};
use crate::error::{StoreError, StoreOp};
use crate::store::Patch;
use crate::store::sql::{
    check_name, conflict, edit_expression, integer_object, json_path, parse_record, parse_versions,
    parse_writers, patch_paths, writers_object,
};

impl SqliteStore {
    /// Applies `patch` ([`write_on`](Self::write_on)) and counts it among the record's
    /// revisions: at once, or when the group transaction it was written in commits. A patch
    /// that failed leaves the record's revision unknown.
    pub(super) fn apply_on(
        &self,
        connection: &mut Connection,
        key: &str,
        patch: &Patch<'_>,
    ) -> Result<(), StoreError> {
        let written = self.write_on(connection, key, patch);
        let mut revisions = self.revisions.lock();
        match written {
            Ok(Some((expiry, columns))) => {
                // Read after the statement's own clock: a row it found live is not taken
                // for expired, nor the other way.
                let pending = !connection.is_autocommit();
                revisions.wrote(key, self.clock.now_ms(), expiry, pending, columns);
                Ok(())
            }
            written => {
                revisions.forget(key);
                written.map(|_| ())
            }
        }
    }

    /// One patch in one statement: the versions it expects are its condition, checked on the
    /// row as the statement writes it (SQLite runs one writer at a time), and the new versions
    /// of the fields it writes (one more than expected) are merged into the row's. A patch
    /// that expects every field never written may create the row; one that expects a field
    /// must find it live. Returns what became of the row's expiry, if it changed the row, and
    /// what is known of the row's columns.
    fn write_on(
        &self,
        connection: &mut Connection,
        key: &str,
        patch: &Patch<'_>,
    ) -> Result<Option<(Expiry, Written)>, StoreError> {
        if patch.only_renews() {
            let Some(expires_at) = self.clock.expiry(patch.ttl) else {
                return Ok(None);
            };
            let now = self.clock.now_ms();
            let renewed = connection
                .prepare_cached(&self.sql.renew)
                .and_then(|mut statement| statement.execute((key, expires_at, now)))
                .map_err(|e| error(StoreOp::Apply, key, e))?;
            return Ok((renewed > 0).then_some((Expiry::Set(expires_at), Written::Kept)));
        }
        for name in patch
            .remove
            .iter()
            .chain(patch.set.iter().map(|(name, _)| name))
        {
            check_name(BACKEND, key, name)?;
        }
        let mut expected = Vec::with_capacity(patch.expect.len());
        // The fields written, with their new versions.
        let mut bumped = Vec::with_capacity(patch.expect.len());
        for (field, version) in &patch.expect {
            let beyond = || StoreError::Malformed {
                backend: BACKEND,
                key: key.to_owned(),
                field: (*field).to_owned(),
                message: "a version beyond i64".to_owned(),
            };
            let version = i64::try_from(*version).map_err(|_| beyond())?;
            expected.push((*field, version));
            // A field only read is a condition, not a write: its version stays.
            if patch.written_fields().any(|written| written == *field) {
                bumped.push((*field, version.checked_add(1).ok_or_else(beyond)?));
            }
        }
        if patch
            .written_fields()
            .any(|field| !bumped.iter().any(|(name, _)| *name == field))
        {
            // A write that expects nothing of a field (an admin's, not the middleware's):
            // its version is read and bumped in a transaction.
            let (removed, set) = patch_paths(BACKEND, key, patch)?;
            let expiry = self.apply_unconditionally(connection, key, patch, &removed, &set)?;
            return Ok(expiry.map(|expiry| (expiry, Written::Unknown)));
        }
        let now = self.clock.now_ms();
        let expires_at = self.clock.expiry(patch.ttl);
        let expiry = expires_at.map_or(Expiry::Kept, Expiry::Set);
        {
            let mut revisions = self.revisions.lock();
            if let Some(columns) = revisions.columns_mut(key, now)
                && expected.iter().all(|(field, version)| {
                    columns.versions.get(field).copied().unwrap_or(0) == *version
                })
            {
                let clock = (now, expires_at);
                if let Some(columns) =
                    self.write_known(connection, key, patch, columns, &bumped, clock)?
                {
                    return Ok(Some((expiry, columns)));
                }
                // Another connection wrote the row: the statement below checks the fields.
            }
        }
        let (removed, set) = patch_paths(BACKEND, key, patch)?;
        let set_pairs = || {
            set.iter()
                .zip(&patch.set)
                .flat_map(|(path, (_, value))| [path as &dyn ToSql, value as &dyn ToSql])
        };
        let expected = expected
            .into_iter()
            .map(|(field, version)| Ok((json_path(BACKEND, key, field)?, version)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let creates = expected.iter().all(|(_, v)| *v == 0);
        let sql = self.sql.patch(Shape {
            creates,
            removed: patch.remove.len(),
            set: patch.set.len(),
            expected: expected.len(),
            renews: expires_at.is_some(),
            known: false,
            whole: false,
            integers: 0,
        });
        let bumped = integer_object(&bumped);
        let writers = writers_object(patch);
        let changed = if creates {
            // Bound in the order the `?` stand in the statement, by reference.
            let mut params: Vec<&dyn ToSql> = vec![&key];
            params.extend(set_pairs());
            params.extend([&bumped as &dyn ToSql, &writers, &expires_at, &now]);
            params.extend(removed.iter().map(|path| path as &dyn ToSql));
            params.extend(set_pairs());
            params.extend([&now as &dyn ToSql, &bumped, &now, &writers, &now]);
            for (path, version) in &expected {
                params.extend([&now as &dyn ToSql, path, version]);
            }
            returning(connection, key, &sql, params)?
        } else {
            let mut params: Vec<&dyn ToSql> =
                removed.iter().map(|path| path as &dyn ToSql).collect();
            params.extend(set_pairs());
            params.extend([&bumped as &dyn ToSql, &writers]);
            if expires_at.is_some() {
                params.push(&expires_at);
            }
            params.extend([&key as &dyn ToSql, &now]);
            for (path, version) in &expected {
                params.extend([path as &dyn ToSql, version]);
            }
            returning(connection, key, &sql, params)?
        };
        if let Some(columns) = changed {
            return Ok(Some((expiry, columns)));
        }
        let current = self.load_on(connection, key)?.unwrap_or_default();
        Err(conflict(BACKEND, key, patch, current))
    }

    /// A patch of a row whose columns this connection keeps, conditional on the row's columns
    /// being those: they are written whole, `data` too when it is kept (SQLite then parses no
    /// JSON), else edited by `json_set`. Returns, if the row was the one kept, whether its
    /// columns still are once the patch is written; `None` if another connection wrote it
    /// since.
    fn write_known(
        &self,
        connection: &Connection,
        key: &str,
        patch: &Patch<'_>,
        columns: &mut Columns,
        bumped: &[(&str, i64)],
        (now, expires_at): (i64, Option<i64>),
    ) -> Result<Option<Written>, StoreError> {
        let shape = Shape {
            creates: false,
            removed: patch.remove.len(),
            set: patch.set.len(),
            expected: 0,
            renews: expires_at.is_some(),
            known: true,
            whole: false,
            integers: 0,
        };
        let versions = columns.versions.merged_text(bumped, &[]);
        let writers = columns.writers.merged_text(&patch.writers, &[]);
        // A value that is not JSON is refused by `json(?)` below, as on every other path.
        let whole = (columns.data.as_ref())
            .filter(|_| patch.set.iter().all(|(_, value)| is_json(value)))
            .map(|data| (data.merged_text(&patch.set, &patch.remove), &*data.text));
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(9 + 2 * patch.set.len());
        let written = if let Some((data, kept)) = &whole {
            params.extend([data as &dyn ToSql, &versions, &writers]);
            if expires_at.is_some() {
                params.push(&expires_at);
            }
            params.extend([
                &key as &dyn ToSql,
                kept,
                &columns.versions.text,
                &columns.writers.text,
                &now,
            ]);
            let shape = Shape {
                whole: true,
                removed: 0,
                set: 0,
                ..shape
            };
            execute(connection, key, &self.sql.patch(shape), params)?
        } else {
            let (removed, set) = patch_paths(BACKEND, key, patch)?;
            let (values, integers) = SetValue::all(&patch.set);
            params.extend(removed.iter().map(|path| path as &dyn ToSql));
            for (path, value) in set.iter().zip(&values) {
                params.extend([path as &dyn ToSql, value]);
            }
            params.extend([&versions as &dyn ToSql, &writers]);
            if expires_at.is_some() {
                params.push(&expires_at);
            }
            params.extend([
                &key as &dyn ToSql,
                &columns.versions.text,
                &columns.writers.text,
                &now,
            ]);
            execute(
                connection,
                key,
                &self.sql.patch(Shape { integers, ..shape }),
                params,
            )?
        };
        if written == 0 {
            return Ok(None);
        }
        // The data kept stays so only if this patch wrote it whole, and it is still short.
        let data = whole.map(|(data, _)| data);
        let data_kept = match (columns.data.as_mut(), data) {
            (Some(kept), Some(text)) => kept.merge(&patch.set, &patch.remove, text),
            _ => false,
        };
        if !data_kept {
            columns.data = None;
        }
        let kept = columns.versions.merge(bumped, &[], versions)
            & columns.writers.merge(&patch.writers, &[], writers);
        Ok(Some(if kept {
            Written::Kept
        } else {
            Written::Unknown
        }))
    }

    /// A patch with fields it expects nothing of, in one immediate transaction: the versions
    /// are read and bumped, then the row is written. The write lock is taken at `BEGIN`, so no
    /// other connection or process writes the row between the two.
    fn apply_unconditionally(
        &self,
        connection: &mut Connection,
        key: &str,
        patch: &Patch<'_>,
        removed: &[String],
        set: &[String],
    ) -> Result<Option<Expiry>, StoreError> {
        self.end_group(connection, None);
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| error(StoreOp::Apply, key, e))?;
        let now = self.clock.now_ms();
        let current = self.load_on(&tx, key)?.unwrap_or_default();
        if patch
            .expect
            .iter()
            .any(|(field, version)| current.version(field) != *version)
        {
            return Err(conflict(BACKEND, key, patch, current));
        }
        let mut versions = current.versions;
        for field in patch.written_fields() {
            *versions.entry(field.to_owned()).or_insert(0) += 1;
        }
        let versions = serde_json::to_string(&versions).unwrap_or_else(|_| "{}".to_owned());
        let writers = writers_object(patch);

        let t = &self.sql.table;
        let insert = edit_expression("'{}'", 0, patch.set.len(), "json(?)");
        let current =
            "(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{}' ELSE data END)";
        let update = edit_expression(current, patch.remove.len(), patch.set.len(), "json(?)");
        let sql = format!(
            "INSERT INTO {t} (key, data, versions, writers, expires_at) VALUES (?, {insert}, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET data = {update}, versions = excluded.versions, \
             writers = json_patch(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN '{{}}' ELSE writers END, ?), \
             expires_at = COALESCE(excluded.expires_at, CASE WHEN expires_at <= ? THEN NULL ELSE expires_at END)"
        );
        let expires_at = self.clock.expiry(patch.ttl);
        let set_pairs = || {
            set.iter()
                .zip(&patch.set)
                .flat_map(|(path, (_, value))| [path as &dyn ToSql, value as &dyn ToSql])
        };
        let params: Vec<&dyn ToSql> = std::iter::once(&key as &dyn ToSql)
            .chain(set_pairs())
            .chain([&versions as &dyn ToSql, &writers, &expires_at, &now])
            .chain(removed.iter().map(|path| path as &dyn ToSql))
            .chain(set_pairs())
            .chain([&now as &dyn ToSql, &writers, &now])
            .collect();
        tx.prepare_cached(&sql)
            .and_then(|mut statement| statement.execute(params_from_iter(params)))
            .map_err(|e| error(StoreOp::Apply, key, e))?;
        tx.commit().map_err(|e| error(StoreOp::Apply, key, e))?;
        Ok(Some(expires_at.map_or(Expiry::Kept, Expiry::Set)))
    }
}

/// Runs a statement that returns the row it changed (`RETURNING data, versions, writers`):
/// `None` if it changed none, else what is known of the row's columns.
fn returning(
    connection: &Connection,
    key: &str,
    sql: &str,
    params: Vec<&dyn ToSql>,
) -> Result<Option<Written>, StoreError> {
    let row: Option<(String, String, String)> = connection
        .prepare_cached(sql)
        .and_then(|mut statement| {
            statement
                .query_row(params_from_iter(params), |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        })
        .map_err(|e| error(StoreOp::Apply, key, e))?;
    Ok(row.map(
        |(data, versions, writers)| match returned(key, data, versions, writers) {
            Some(columns) => Written::Returned(Box::new(columns)),
            None => Written::Unknown,
        },
    ))
}

/// The columns a statement returned, to keep: the statement wrote them, so they parse; if they
/// do not, or are too long to keep, the row is left to the next read.
fn returned(key: &str, data: String, versions: String, writers: String) -> Option<Columns> {
    let mut record = parse_record(BACKEND, key, &data).ok()?;
    record.versions = parse_versions(BACKEND, key, &versions).ok()?;
    record.writers = parse_writers(BACKEND, key, &writers).ok()?;
    Columns::of_row(data, versions, writers, &record)
}

fn execute(
    connection: &Connection,
    key: &str,
    sql: &str,
    params: Vec<&dyn ToSql>,
) -> Result<usize, StoreError> {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute(params_from_iter(params)))
        .map_err(|e| error(StoreOp::Apply, key, e))
}
