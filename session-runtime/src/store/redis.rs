//! [`RedisStore`]: one Redis hash per session (feature `redis`).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};

use super::{Cursor, Page, Patch, Record, Store, StoreFuture, listed_key, within};
use crate::clock::Later;
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
/// Field values are the JSON text of each field. A patch is one Lua script (`EVALSHA`): it
/// checks the versions the patch expects, then `HSET`s the set fields, `HDEL`s the removed
/// ones and renews the expiry: one round trip, applied atomically, touching no other field. A
/// load is one `HGETALL`. Expiry is Redis's own, so expired sessions vanish without a sweep.
///
/// # Deadlines
///
/// Every call fails with a [`StoreError::Backend`] naming the deadline once it has waited
/// [`timeout`](Self::with_timeout) (default [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT), 2 s) for
/// an answer: a Redis that is stopped or unreachable makes updates fail fast rather than hang,
/// and their writes are taken back for the redelivery. A patch whose answer was lost may still
/// have been applied; its redelivery is then recognised by its update id. The connection
/// [`connect`](Self::connect) makes reconnects on its own, each attempt bounded by the same
/// deadline and at most a second apart, so sessions are served again within seconds of Redis's
/// return.
///
/// # Redis Cluster (feature `redis-cluster`)
///
/// [`connect_cluster`](Self::connect_cluster) takes the URLs of some of a cluster's nodes and
/// routes each call to the node that owns its key. Everything of one session (its fields,
/// their versions and writers, an exclusive-mode lease) is in its one hash, so in one slot: a
/// patch stays one atomic script on one node, and sessions spread over the masters. Redis
/// replicates to replicas asynchronously: a write acknowledged by a master that fails before
/// it reached a replica is lost with it when the replica takes over, unless the store
/// [waits for replicas](Self::wait_for_replicas).
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
    timeout: Duration,
    /// How many replicas must acknowledge a write, and how long the master waits for them.
    replicas: Option<(u32, Duration)>,
    /// On a cluster, a connection that can address each master: listing keys scans every
    /// master in turn.
    #[cfg(feature = "redis-cluster")]
    cluster: Option<redis::cluster_async::ClusterConnection>,
}

impl<C> std::fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl RedisStore<ConnectionManager> {
    /// How long a call waits for Redis by default, connecting included.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connects to `url` (`redis://host:port/db`) through a [`ConnectionManager`], which
    /// reconnects by itself, with the default deadline (see "Deadlines" above).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, Self::DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another deadline for connecting and for every call.
    pub async fn connect_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let error = |e: redis::RedisError| StoreError::backend(BACKEND, StoreOp::Connect, "", e);
        let client = redis::Client::open(url).map_err(error)?;
        // The driver's defaults wait for an answer forever and back off for up to a minute
        // between reconnects; bound both.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = within(BACKEND, timeout, StoreOp::Connect, "", async {
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(error)
        })
        .await?;
        Ok(Self::from_connection(connection).with_timeout(timeout))
    }
}

#[cfg(feature = "redis-cluster")]
impl RedisStore<redis::cluster_async::ClusterConnection> {
    /// Connects to a Redis Cluster through `nodes` (URLs of some of its nodes, e.g.
    /// `["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]`), with the default deadline.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        Self::connect_cluster_with_timeout(nodes, RedisStore::DEFAULT_TIMEOUT).await
    }

    /// [`connect_cluster`](Self::connect_cluster) with another deadline for connecting and for
    /// every call.
    pub async fn connect_cluster_with_timeout(
        nodes: &[&str],
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let error = |e: redis::RedisError| StoreError::backend(BACKEND, StoreOp::Connect, "", e);
        // Redirections (a slot that moved, a failover) are retried a few times, at most a
        // second apart, within each call's deadline.
        let client = redis::cluster::ClusterClient::builder(nodes.iter().copied())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(1_000)
            .build()
            .map_err(error)?;
        let connection = within(BACKEND, timeout, StoreOp::Connect, "", async {
            client.get_async_connection().await.map_err(error)
        })
        .await?;
        Ok(Self::from_cluster_connection(connection).with_timeout(timeout))
    }

    /// A store over a cluster connection the application already has. Use this rather than
    /// [`from_connection`](RedisStore::from_connection) for a cluster: listing keys
    /// ([`Store::keys`]) must scan every master.
    pub fn from_cluster_connection(connection: redis::cluster_async::ClusterConnection) -> Self {
        let mut store = Self::from_connection(connection.clone());
        store.cluster = Some(connection);
        store
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
            timeout: RedisStore::DEFAULT_TIMEOUT,
            replicas: None,
            #[cfg(feature = "redis-cluster")]
            cluster: None,
        }
    }

    /// How long each call waits for an answer before it fails (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Acknowledges a write only once `replicas` replicas of its master have it (Redis's
    /// `WAIT`, in the same round trip as the write), waiting for them at most `wait`. Redis
    /// replicates asynchronously: without this, a write the master acknowledged and had not
    /// passed on is lost if the master fails and a replica takes over. With it, a write the
    /// replicas did not confirm in time fails the update, at the cost of a replica round trip
    /// per write, and no write succeeds on a master that has too few replicas (after a
    /// failover, until a replica joins again).
    ///
    /// A failed write is still on the master, and the redelivery of its update finds it there
    /// by a read: under this setting the store says reads are not durable
    /// ([`Store::reads_are_durable`]), and the runtime acknowledges such an update only once
    /// a write of its own to the session is confirmed by the replicas too (ARCHITECTURE.md,
    /// "Redis Cluster"; `tests/cluster_failover.rs`).
    pub fn wait_for_replicas(mut self, replicas: u32, wait: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, wait));
        self
    }

    /// Puts sessions under `{prefix}{key}` (default `typed_session:`).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// `SCAN` from `position` until about `limit` keys starting with `prefix` are found, the
    /// scan is over (`0`), or half the deadline is spent; returns the keys (without the
    /// store's prefix) and where the scan stands. `on` sends one `SCAN` to the node scanned.
    async fn scan<F, Fut>(
        &self,
        prefix: &str,
        mut position: u64,
        limit: usize,
        mut on: F,
    ) -> Result<(Vec<String>, u64), StoreError>
    where
        F: FnMut(redis::Cmd) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<(u64, Vec<Vec<u8>>)>>,
    {
        let failed = |e| StoreError::backend(BACKEND, StoreOp::List, "", e);
        let mut pattern = Vec::with_capacity(self.prefix.len() + prefix.len() + 1);
        for &byte in self.prefix.as_bytes().iter().chain(prefix.as_bytes()) {
            if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
                pattern.push(b'\\');
            }
            pattern.push(byte);
        }
        pattern.push(b'*');
        let budget = tokio::time::Instant::now().later(self.timeout / 2);
        let mut keys = Vec::new();
        // How many slots a `SCAN` looks at: doubled after each that found nothing (up to
        // 10,000, about a millisecond of Redis's time), so a prefix few keys of a large
        // keyspace have is walked in tens of round trips, not thousands.
        let mut count = limit.clamp(100, 10_000);
        loop {
            let mut command = redis::cmd("SCAN");
            command
                .arg(position)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(count);
            let (next, found) = within(BACKEND, self.timeout, StoreOp::List, "", async {
                on(command).await.map_err(failed)
            })
            .await?;
            if found.is_empty() {
                count = (count * 2).min(10_000);
            }
            for key in found {
                let key = key.strip_prefix(self.prefix.as_bytes()).unwrap_or(&key);
                keys.push(listed_key(BACKEND, key.to_vec())?);
            }
            position = next;
            if position == 0 || keys.len() >= limit || tokio::time::Instant::now() >= budget {
                return Ok((keys, position));
            }
        }
    }

    /// The hash that holds `key`'s session.
    fn redis_key<'a>(&'a self, key: &'a str) -> Prefixed<'a> {
        Prefixed(&self.prefix, key)
    }
}

/// The record a session hash holds (its field-value pairs as `HGETALL` returns them).
fn record_of(key: &str, hash: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Record, StoreError> {
    let mut record = Record::default();
    for (name, value) in hash {
        // Names and values are UTF-8 as this store writes them; say which is not.
        let name = String::from_utf8(name).map_err(|error| StoreError::Malformed {
            backend: BACKEND,
            key: key.to_owned(),
            field: String::from_utf8_lossy(error.as_bytes()).into_owned(),
            message: "the stored field name is not UTF-8".to_owned(),
        })?;
        let value = String::from_utf8(value).map_err(|_| StoreError::Malformed {
            backend: BACKEND,
            key: key.to_owned(),
            field: name.trim_start_matches('\0').to_owned(),
            message: "the stored value is not UTF-8".to_owned(),
        })?;
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
    Ok(record)
}

/// The hash field that holds the version of field `f` is `VERSION_PREFIX` + `f`, the one that
/// holds its writer `WRITER_PREFIX` + `f`; field names cannot start with NUL in any store, so
/// none of them meet.
const VERSION_PREFIX: &str = "\0";
const WRITER_PREFIX: &str = "\0\0";

/// One patch, all or nothing, in one round trip: the versions the patch expects are checked
/// first (a conflict writes nothing and returns the fields that differ with the whole hash,
/// so the writer needs no second round trip to catch up), then the removed fields are
/// deleted, and the set fields, their versions and writers written with one `HSET`, then the
/// expiry is renewed.
///
/// Redis runs scripts on its one thread, so with many updates in flight the script's cost is
/// the store's throughput, and every step of Lua counts (a table built or a string joined in
/// the script costs about what a hash command does). So the caller sends the script its
/// arguments ready to use ([`apply_arguments`]): the version names to check, and the `HSET`'s
/// arguments whole, with each written field's new version already computed from the version
/// the patch expects it at. Only a field written without an expectation (a patch built by
/// hand; the runtime expects every field it writes) has its version read and incremented here.
///
/// Arguments, in order: the count of expected versions `e`, their `e` hash fields (the
/// version fields, `\0` + name), the `e` versions; the count of removed fields and their
/// names; the count of version fields to increment in the script and their names; the count
/// of `HSET` arguments and the arguments; the expiry in milliseconds (0: leave it).
static APPLY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local hash = KEYS[1]
local e = tonumber(ARGV[1])
if e > 0 then
  local have = redis.call('HMGET', hash, unpack(ARGV, 2, 1 + e))
  local conflicts
  for k = 1, e do
    local held, want = have[k] or '0', ARGV[1 + e + k]
    if held ~= want and tonumber(held) ~= tonumber(want) then
      conflicts = conflicts or {}
      conflicts[#conflicts + 1] = string.sub(ARGV[1 + k], 2)
    end
  end
  if conflicts then
    return {conflicts, redis.call('HGETALL', hash)}
  end
end
local p = 2 + 2 * e
local removed = tonumber(ARGV[p])
if removed > 0 then
  redis.call('HDEL', hash, unpack(ARGV, p + 1, p + removed))
end
p = p + removed + 1
local bumped = tonumber(ARGV[p])
if bumped > 0 then
  local have = redis.call('HMGET', hash, unpack(ARGV, p + 1, p + bumped))
  local versions = {}
  for k = 1, bumped do
    versions[2 * k - 1] = ARGV[p + k]
    versions[2 * k] = tostring(tonumber(have[k] or '0') + 1)
  end
  redis.call('HSET', hash, unpack(versions))
end
p = p + bumped + 1
local set = tonumber(ARGV[p])
if set > 0 then
  redis.call('HSET', hash, unpack(ARGV, p + 1, p + set))
end
local ttl = tonumber(ARGV[p + set + 1])
if ttl > 0 then
  redis.call('PEXPIRE', hash, ttl)
end
return false
"#,
    )
});

/// `prefix` + `name` as one argument, written into the command without being joined first: a
/// session's hash (the store's prefix and the key), or a version or writer field in it.
struct Prefixed<'a>(&'a str, &'a str);

impl redis::ToRedisArgs for Prefixed<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        // Into the command's buffer in memory: the writes cannot fail.
        let _ = arg
            .write_all(self.0.as_bytes())
            .and_then(|()| arg.write_all(self.1.as_bytes()));
    }
}

/// The call of [`APPLY`] for `patch` on the hash `hash`: `EVALSHA` with the arguments built
/// straight into the command's one buffer (a `ScriptInvocation` allocates one per argument,
/// and copies them all into a command when sent).
fn apply_command(hash: Prefixed<'_>, patch: &Patch<'_>) -> redis::Cmd {
    // Room for every argument at once, so the command's two vectors are not grown (and
    // copied) argument by argument. A bound: a number takes at most 20 bytes, a version or
    // writer name the field's name and its prefix; a written field is named up to three
    // times (its value, its version, and a version the script increments).
    let (set, removed) = (patch.set.len(), patch.remove.len());
    let arguments =
        10 + 2 * patch.expect.len() + 3 * (set + removed) + 2 * set + 2 * patch.writers.len();
    let expected: usize = patch.expect.iter().map(|(name, _)| name.len() + 22).sum();
    let written: usize = patch
        .set
        .iter()
        .map(|(name, _)| name)
        .chain(&patch.remove)
        .map(|name| 2 * name.len() + 24)
        .sum();
    let writers: usize = patch.writers.iter().map(|(name, _)| name.len() + 24).sum();
    let bytes = 120 + hash.0.len() + hash.1.len() + patch.bytes() + expected + written + writers;
    let mut command = redis::Cmd::with_capacity(arguments, bytes);
    command
        .arg("EVALSHA")
        .arg(APPLY.get_hash())
        .arg(1)
        .arg(hash);
    apply_arguments(&mut command, patch);
    command
}

/// Adds `patch` to `command` as [`APPLY`] takes it.
fn apply_arguments(command: &mut redis::Cmd, patch: &Patch<'_>) {
    // The version each written field will have: one past the version the patch expects it
    // at, or unknown (read and incremented by the script). A patch of many fields looks its
    // expectations up in a map rather than each in a list.
    let many = (patch.expect.len() > 16).then(|| {
        patch
            .expect
            .iter()
            .copied()
            .collect::<std::collections::HashMap<&str, u64>>()
    });
    let expected = |field: &str| {
        let version = match &many {
            Some(map) => map.get(field).copied(),
            None => patch
                .expect
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, version)| *version),
        };
        version.map(|version| version.saturating_add(1))
    };
    let written = patch.set.iter().map(|(field, _)| *field);
    let next: Vec<(&str, Option<u64>)> = written
        .chain(patch.remove.iter().copied())
        .map(|field| (field, expected(field)))
        .collect();

    command.arg(patch.expect.len());
    for (field, _) in &patch.expect {
        command.arg(Prefixed(VERSION_PREFIX, field));
    }
    for (_, version) in &patch.expect {
        command.arg(*version);
    }
    command.arg(patch.remove.len());
    for field in &patch.remove {
        command.arg(*field);
    }
    command.arg(next.iter().filter(|(_, version)| version.is_none()).count());
    for (field, _) in next.iter().filter(|(_, version)| version.is_none()) {
        command.arg(Prefixed(VERSION_PREFIX, field));
    }
    let known = next.iter().filter(|(_, version)| version.is_some()).count();
    command.arg(2 * (patch.set.len() + known + patch.writers.len()));
    for (field, value) in &patch.set {
        command.arg(*field).arg(value.as_str());
    }
    for (field, version) in &next {
        if let Some(version) = version {
            command.arg(Prefixed(VERSION_PREFIX, field)).arg(*version);
        }
    }
    for (field, writer) in &patch.writers {
        command.arg(Prefixed(WRITER_PREFIX, field)).arg(*writer);
    }
    command.arg(patch.ttl.map_or(0, millis));
}

/// What the patch script answers when it refuses a patch: the fields whose version differed,
/// and the hash as `HGETALL` returns it, names and values in turn. An applied patch is
/// answered with nil (Lua's `false`), the cheapest reply a script can make.
type Refusal = (Vec<String>, Vec<Vec<u8>>);

/// A duration as the whole milliseconds Redis takes, at least 1 (0 means "none" to `PEXPIRE`'s
/// caller here and "forever" to `WAIT`).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Whether `answered` failed because the server does not know the patch script (it was never
/// loaded there, or the server restarted or flushed its scripts since).
fn unknown_script<T>(answered: &redis::RedisResult<T>) -> bool {
    matches!(answered, Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// Sends the patch command; if the server does not know the script, loads it and sends the
/// command again in one pipeline (a cluster routes the pipeline by its keyed command, so the
/// script is loaded on the node that runs it).
async fn applied<C: ConnectionLike>(
    connection: &mut C,
    command: &redis::Cmd,
) -> redis::RedisResult<Option<Refusal>> {
    let answered = command.query_async(connection).await;
    if !unknown_script(&answered) {
        return answered;
    }
    let mut pipe = redis::pipe();
    pipe.load_script(&APPLY)
        .ignore()
        .add_command(command.clone());
    let (refusal,): (Option<Refusal>,) = pipe.query_async(connection).await?;
    Ok(refusal)
}

/// The patch command and a `WAIT` for `replicas` in one pipeline, so both go to the node that
/// owns the key (a cluster routes the pipeline by its one keyed command), and `WAIT` covers
/// the script's write. Loads the script first if the server does not know it.
async fn replicated<C: ConnectionLike>(
    connection: &mut C,
    command: &redis::Cmd,
    replicas: u32,
    wait: Duration,
) -> redis::RedisResult<(Option<Refusal>, u32)> {
    let wait_ms = millis(wait);
    let run = |load: bool| {
        let mut pipe = redis::pipe();
        if load {
            pipe.load_script(&APPLY).ignore();
        }
        pipe.add_command(command.clone())
            .cmd("WAIT")
            .arg(replicas)
            .arg(wait_ms);
        pipe
    };
    let answered = run(false).query_async(connection).await;
    if unknown_script(&answered) {
        return run(true).query_async(connection).await;
    }
    answered
}

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        StoreFuture::new(async move {
            let mut connection = self.connection.clone();
            let mut command = redis::cmd("HGETALL");
            command.arg(self.redis_key(key));
            let hash: Vec<(Vec<u8>, Vec<u8>)> =
                within(BACKEND, self.timeout, StoreOp::Load, key, async {
                    command
                        .query_async(&mut connection)
                        .await
                        .map_err(|e| StoreError::backend(BACKEND, StoreOp::Load, key, e))
                })
                .await?;
            // Redis removes a hash with its last field: an empty reply is no session.
            if hash.is_empty() {
                return Ok(None);
            }
            record_of(key, hash).map(Some)
        })
    }

    fn apply<'a>(
        &'a self,
        key: &'a str,
        patch: &'a Patch<'a>,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            crate::store::check_size(BACKEND, patch)?;
            let command = apply_command(self.redis_key(key), patch);
            let mut connection = self.connection.clone();
            let failed = |e| StoreError::backend(BACKEND, StoreOp::Apply, key, e);
            let refusal: Option<Refusal> = match self.replicas {
                None => {
                    within(BACKEND, self.timeout, StoreOp::Apply, key, async {
                        applied(&mut connection, &command).await.map_err(failed)
                    })
                    .await?
                }
                Some((replicas, wait)) => {
                    let deadline = self.timeout.saturating_add(wait);
                    let (refusal, acknowledged): (Option<Refusal>, u32) =
                        within(BACKEND, deadline, StoreOp::Apply, key, async {
                            replicated(&mut connection, &command, replicas, wait)
                                .await
                                .map_err(failed)
                        })
                        .await?;
                    if refusal.is_none() && acknowledged < replicas {
                        return Err(StoreError::backend(
                            BACKEND,
                            StoreOp::Apply,
                            key,
                            format!(
                                "the write is on the master, but {acknowledged} of {replicas} replicas acknowledged it within {wait:?}: a failover now could lose it"
                            ),
                        ));
                    }
                    refusal
                }
            };
            let Some((conflicts, current)) = refusal else {
                return Ok(());
            };
            let mut flat = current.into_iter();
            let mut current = Vec::with_capacity(flat.len() / 2);
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                current.push((name, value));
            }
            Err(StoreError::Conflict {
                backend: BACKEND,
                key: key.to_owned(),
                fields: conflicts,
                current: Some(Box::new(record_of(key, current)?)),
            })
        })
    }

    /// `SCAN` with `MATCH` on the prefix (on a cluster, every master in turn): the cursor is
    /// the scan's position. A page may hold a few more keys than `limit`, or fewer while the
    /// walk goes on (a scan that found little within half the deadline hands back its
    /// position).
    fn keys<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a Cursor>,
        limit: usize,
    ) -> StoreFuture<'a, Result<Page, StoreError>> {
        StoreFuture::new(async move {
            let bad_cursor = |cursor: &Cursor| StoreError::Config {
                backend: BACKEND,
                message: format!("{cursor:?} is not a cursor of this store"),
            };
            #[cfg(feature = "redis-cluster")]
            if let Some(cluster) = &self.cluster {
                return cluster::keys(self, cluster, prefix, cursor, limit).await;
            }
            let position = match cursor {
                Some(cursor) => cursor.as_str().parse().map_err(|_| bad_cursor(cursor))?,
                None => 0,
            };
            let (keys, position) = self
                .scan(prefix, position, limit, |command| {
                    let mut connection = self.connection.clone();
                    async move { command.query_async(&mut connection).await }
                })
                .await?;
            let next = (position != 0).then(|| Cursor::new(position.to_string()));
            Ok(Page { keys, next })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let mut connection = self.connection.clone();
            let mut command = redis::cmd("DEL");
            command.arg(self.redis_key(key));
            within(BACKEND, self.timeout, StoreOp::Delete, key, async {
                command
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(|e| StoreError::backend(BACKEND, StoreOp::Delete, key, e))
            })
            .await
        })
    }

    fn returns_written_text(&self) -> bool {
        true
    }

    fn reads_are_durable(&self) -> bool {
        self.replicas.is_none()
    }
}

/// Listing the keys of a cluster: one scan per master, in the order of their addresses.
#[cfg(feature = "redis-cluster")]
mod cluster;
