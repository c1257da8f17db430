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

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            let mut connection = self.connection.clone();
            let record: Record = redis::cmd("HGETALL")
                .arg(self.redis_key(key))
                .query_async(&mut connection)
                .await
                .map_err(|e| StoreError::backend(BACKEND, StoreOp::Load, key, e))?;
            // Redis removes a hash with its last field: an empty reply is no session.
            Ok((!record.is_empty()).then_some(record))
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let redis_key = self.redis_key(key);
            let mut pipe = redis::pipe();
            pipe.atomic();
            if !patch.set.is_empty() {
                let cmd = pipe.cmd("HSET").arg(&redis_key);
                for (field, value) in &patch.set {
                    cmd.arg(*field).arg(value.as_str());
                }
                cmd.ignore();
            }
            if !patch.remove.is_empty() {
                pipe.cmd("HDEL")
                    .arg(&redis_key)
                    .arg(&patch.remove[..])
                    .ignore();
            }
            if let Some(ttl) = patch.ttl {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                pipe.cmd("PEXPIRE").arg(&redis_key).arg(ms).ignore();
            }
            let mut connection = self.connection.clone();
            pipe.query_async::<()>(&mut connection)
                .await
                .map_err(|e| StoreError::backend(BACKEND, StoreOp::Apply, key, e))
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
