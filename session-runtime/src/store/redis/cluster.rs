//! Listing the keys of a Redis Cluster: one scan per master, in the order of their addresses.

use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::{BACKEND, ConnectionLike, Cursor, Page, RedisStore, StoreError, StoreOp, within};

/// The masters' addresses (`host`, `port`), sorted, from `CLUSTER SLOTS`.
async fn masters(
    store: &RedisStore<impl ConnectionLike + Clone + Send + Sync + 'static>,
    cluster: &ClusterConnection,
) -> Result<Vec<(String, u16)>, StoreError> {
    let failed = |e: redis::RedisError| StoreError::backend(BACKEND, StoreOp::List, "", e);
    let mut connection = cluster.clone();
    let slots = within(BACKEND, store.timeout, StoreOp::List, "", async {
        connection
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(failed)
    })
    .await?;
    let mut masters = Vec::new();
    let Value::Array(ranges) = slots else {
        return Err(unexpected("CLUSTER SLOTS did not answer an array"));
    };
    for range in ranges {
        // [start, end, [host, port, id, ..], replicas..]
        let master = match range {
            Value::Array(parts) => parts.into_iter().nth(2),
            _ => None,
        };
        let Some(Value::Array(node)) = master else {
            return Err(unexpected("a slot range of CLUSTER SLOTS has no master"));
        };
        let mut node = node.into_iter();
        let host: String = node
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| unexpected("a master of CLUSTER SLOTS has no host"))?;
        let port: u16 = node
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| unexpected("a master of CLUSTER SLOTS has no port"))?;
        masters.push((host, port));
    }
    masters.sort();
    masters.dedup();
    Ok(masters)
}

fn unexpected(message: &str) -> StoreError {
    StoreError::backend(BACKEND, StoreOp::List, "", message.to_owned())
}

/// The cursor is `host:port/position`: the master being scanned and where its scan
/// stands. A master that failed over during the walk is gone from the list: the walk
/// goes on with the next address, and keys of the failed one may be missed.
pub(super) async fn keys(
    store: &RedisStore<impl ConnectionLike + Clone + Send + Sync + 'static>,
    cluster: &ClusterConnection,
    prefix: &str,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page, StoreError> {
    let masters = masters(store, cluster).await?;
    let (mut at, mut position) = match cursor {
        None => (0, 0),
        Some(cursor) => {
            let parsed = cursor
                .as_str()
                .rsplit_once('/')
                .and_then(|(node, position)| {
                    let (host, port) = node.rsplit_once(':')?;
                    Some((
                        (host.to_owned(), port.parse::<u16>().ok()?),
                        position.parse::<u64>().ok()?,
                    ))
                });
            let Some((node, position)) = parsed else {
                return Err(StoreError::Config {
                    backend: BACKEND,
                    message: format!("{cursor:?} is not a cursor of this store"),
                });
            };
            match masters.binary_search(&node) {
                Ok(at) => (at, position),
                Err(at) => (at, 0),
            }
        }
    };
    let mut keys = Vec::new();
    while let Some((host, port)) = masters.get(at) {
        let route = || {
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            })
        };
        let (found, next) = store
            .scan(
                prefix,
                position,
                limit.saturating_sub(keys.len()).max(1),
                |command| {
                    let mut connection = cluster.clone();
                    let route = route();
                    async move {
                        let value = connection.route_command(command, route).await?;
                        Ok(redis::from_redis_value(value)?)
                    }
                },
            )
            .await?;
        keys.extend(found);
        if next != 0 {
            return Ok(Page {
                keys,
                next: Some(Cursor::new(format!("{host}:{port}/{next}"))),
            });
        }
        at += 1;
        position = 0;
        if keys.len() >= limit {
            let next = masters
                .get(at)
                .map(|(host, port)| Cursor::new(format!("{host}:{port}/0")));
            return Ok(Page { keys, next });
        }
    }
    Ok(Page { keys, next: None })
}
