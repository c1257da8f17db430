//! [`RedisStore`]: one Redis hash per session (feature `redis`).

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};

use super::{Patch, Record, Store, StoreFuture};
use crate::error::{StoreError, StoreOp};

const BACKEND: &str = "redis";

/// Sessions in Redis, one hash per session under `{prefix}{key}`:
///
/// ```text
/// > HGETALL typed_session:42:42
/// 1) "count"
/// 2) "3"
/// 3) "lang"
/// 4) "\"de\""
/// ```
///
/// Field values are the JSON text of each field. A patch is `HSET` of the set fields, `HDEL`
/// of the removed ones and `PEXPIRE` for the expiry, sent as one `MULTI`/`EXEC` pipeline: one
/// round trip, applied atomically, touching no other field. A load is one `HGETALL`. Expiry is
/// Redis's own, so expired sessions vanish without a sweep.
///
/// # Example
///
/// ```no_run
/// use typed_session::RedisStore;
///
/// # async fn run() -> Result<(), typed_session::StoreError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.with_prefix("mybot:");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    connection: C,
    prefix: Arc<str>,
}

impl<C> std::fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore<ConnectionManager> {
    /// Connects to `url` (`redis://host:port/db`) through a [`ConnectionManager`], which
    /// reconnects by itself.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let error = |e: redis::RedisError| StoreError::backend(BACKEND, StoreOp::Connect, "", e);
        let client = redis::Client::open(url).map_err(error)?;
        let connection = ConnectionManager::new(client).await.map_err(error)?;
        Ok(Self::from_connection(connection))
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over a connection the application already has (a [`ConnectionManager`] or a
    /// `MultiplexedConnection`); it is cloned per call and never reconnected by the store.
    pub fn from_connection(connection: C) -> Self {
        RedisStore {
            connection,
            prefix: Arc::from("typed_session:"),
        }
    }

    /// Puts sessions under `{prefix}{key}` (default `typed_session:`).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    fn redis_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }
}

/// The hash field that holds the version of field `f` is `VERSION_PREFIX` + `f`, the one that
/// holds its writer `WRITER_PREFIX` + `f`; field names cannot start with NUL in any store, so
/// none of them meet.
const VERSION_PREFIX: &str = "\0";
const WRITER_PREFIX: &str = "\0\0";

/// One patch, all or nothing, in one round trip: the versions the patch expects are checked
/// first (a conflict returns the fields that differ and writes nothing), then each field is set
/// or removed and its version incremented, then the expiry is renewed.
static APPLY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local hash = KEYS[1]
local i = 1
local function next_arg()
  local value = ARGV[i]
  i = i + 1
  return value
end
local conflicts = {}
for _ = 1, tonumber(next_arg()) do
  local field, want = next_arg(), tonumber(next_arg())
  local have = tonumber(redis.call('HGET', hash, '\0' .. field) or '0')
  if have ~= want then
    conflicts[#conflicts + 1] = field
  end
end
if #conflicts > 0 then
  return conflicts
end
for _ = 1, tonumber(next_arg()) do
  local field, value = next_arg(), next_arg()
  redis.call('HSET', hash, field, value)
  redis.call('HINCRBY', hash, '\0' .. field, 1)
end
for _ = 1, tonumber(next_arg()) do
  local field = next_arg()
  redis.call('HDEL', hash, field)
  redis.call('HINCRBY', hash, '\0' .. field, 1)
end
for _ = 1, tonumber(next_arg()) do
  local field, writer = next_arg(), next_arg()
  redis.call('HSET', hash, '\0\0' .. field, writer)
end
local ttl = tonumber(next_arg())
if ttl > 0 then
  redis.call('PEXPIRE', hash, ttl)
end
return {}
"#,
    )
});

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            let mut connection = self.connection.clone();
            let hash: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.redis_key(key))
                .query_async(&mut connection)
                .await
                .map_err(|e| StoreError::backend(BACKEND, StoreOp::Load, key, e))?;
            // Redis removes a hash with its last field: an empty reply is no session.
            if hash.is_empty() {
                return Ok(None);
            }
            let mut record = Record::default();
            for (name, value) in hash {
                if let Some(field) = name.strip_prefix(WRITER_PREFIX) {
                    let writer = value.parse().map_err(|_| StoreError::Malformed {
                        backend: BACKEND,
                        key: key.to_owned(),
                        field: field.to_owned(),
                        message: format!("the writer {value:?} is not an update id"),
                    })?;
                    record.writers.insert(field.to_owned(), writer);
                    continue;
                }
                match name.strip_prefix(VERSION_PREFIX) {
                    Some(field) => {
                        let version = value.parse().map_err(|_| StoreError::Malformed {
                            backend: BACKEND,
                            key: key.to_owned(),
                            field: field.to_owned(),
                            message: format!("the version {value:?} is not a number"),
                        })?;
                        record.versions.insert(field.to_owned(), version);
                    }
                    None => {
                        record.fields.insert(name, value);
                    }
                }
            }
            Ok(Some(record))
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let mut invocation = APPLY.prepare_invoke();
            invocation.key(self.redis_key(key));
            invocation.arg(patch.expect.len());
            for (field, version) in &patch.expect {
                invocation.arg(*field).arg(*version);
            }
            invocation.arg(patch.set.len());
            for (field, value) in &patch.set {
                invocation.arg(*field).arg(value.as_str());
            }
            invocation.arg(patch.remove.len());
            for field in &patch.remove {
                invocation.arg(*field);
            }
            invocation.arg(patch.writers.len());
            for (field, writer) in &patch.writers {
                invocation.arg(*field).arg(*writer);
            }
            let ttl_ms = patch.ttl.map_or(0, |ttl| {
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
            });
            invocation.arg(ttl_ms);
            let mut connection = self.connection.clone();
            let conflicts: Vec<String> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| StoreError::backend(BACKEND, StoreOp::Apply, key, e))?;
            if conflicts.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    backend: BACKEND,
                    key: key.to_owned(),
                    fields: conflicts,
                })
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let mut connection = self.connection.clone();
            redis::cmd("DEL")
                .arg(self.redis_key(key))
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| StoreError::backend(BACKEND, StoreOp::Delete, key, e))
        })
    }

    fn returns_written_text(&self) -> bool {
        true
    }
}
