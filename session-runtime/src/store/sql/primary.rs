//! Several PostgreSQL hosts, one primary: which one a [`PostgresStore`](crate::PostgresStore)
//! writes to, found again after a failover.
//!
//! A URL may name several hosts (`postgres://user@a:5432,b:5432/db`), as libpq's do. The store
//! writes, so it wants the one that accepts writes: it asks each host in the URL's order
//! (`SELECT pg_is_in_recovery()`) and points its pool at the first that is not a standby. A
//! call that fails in a way that says the primary may be gone (the connection broke, no
//! connection could be had, the server is shutting down or is read-only, the call outlived
//! its deadline) marks the choice suspect; the next call asks the hosts again before it runs,
//! one call at a time while the others wait for its answer, so the call after a standby's
//! promotion reaches the new primary. The failed call itself is not run again: a write whose
//! answer was lost may have been applied, and only the runtime (which knows the update) can
//! tell.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};

use crate::error::{StoreError, StoreOp};

const BACKEND: &str = "postgres";

/// The hosts of the URL and the one the pool connects to.
pub(super) struct Hosts {
    /// One per host, in the URL's order.
    candidates: Vec<PgConnectOptions>,
    /// `host:port` of each, for errors and logs.
    names: Vec<String>,
    /// The candidate the pool connects to.
    current: AtomicUsize,
    /// A call failed in a way that says the primary may be gone: the next call asks first.
    suspect: AtomicBool,
    /// One round of asking at a time.
    asking: tokio::sync::Mutex<()>,
    /// How long one host may take to answer.
    patience: Duration,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("names", &self.names)
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("suspect", &self.suspect.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Hosts {
    pub(super) fn new(candidates: Vec<PgConnectOptions>, patience: Duration) -> Self {
        let names = candidates
            .iter()
            .map(|c| format!("{}:{}", c.get_host(), c.get_port()))
            .collect();
        Hosts {
            candidates,
            names,
            current: AtomicUsize::new(0),
            suspect: AtomicBool::new(true),
            asking: tokio::sync::Mutex::new(()),
            patience,
        }
    }

    /// The options of the primary, asked of every host now: for the pool's first connection.
    pub(super) async fn primary(&self) -> Result<PgConnectOptions, StoreError> {
        let found = self.ask(StoreOp::Connect, "").await?;
        self.current.store(found, Ordering::Release);
        self.suspect.store(false, Ordering::Release);
        Ok(self.candidates[found].clone())
    }

    /// Before a call: if the last choice is suspect, asks the hosts again and points `pool`
    /// at the primary.
    pub(super) async fn ready(
        &self,
        pool: &PgPool,
        op: StoreOp,
        key: &str,
    ) -> Result<(), StoreError> {
        if !self.suspect.load(Ordering::Acquire) {
            return Ok(());
        }
        let _asking = self.asking.lock().await;
        // Another call may have asked while this one waited.
        if !self.suspect.load(Ordering::Acquire) {
            return Ok(());
        }
        let found = self.ask(op, key).await?;
        if self.current.swap(found, Ordering::AcqRel) != found {
            // Connections already open to the old primary fail (their next call, or sqlx's
            // check as they are given back or taken after an idle while) and are closed; new
            // ones go to the new primary.
            pool.set_connect_options(self.candidates[found].clone());
            tracing::warn!(
                target: "typed_session::store",
                primary = %self.names[found],
                "postgres store: writing to a new primary"
            );
        }
        self.suspect.store(false, Ordering::Release);
        Ok(())
    }

    /// After a call: marks the choice suspect when `error` says the primary may be gone.
    pub(super) fn note(&self, error: &StoreError) {
        if primary_may_be_gone(error) {
            self.suspect.store(true, Ordering::Release);
        }
    }

    /// The index of the first host, in the URL's order, that accepts writes.
    async fn ask(&self, op: StoreOp, key: &str) -> Result<usize, StoreError> {
        let mut answers = Vec::with_capacity(self.candidates.len());
        for (index, candidate) in self.candidates.iter().enumerate() {
            match tokio::time::timeout(self.patience, is_primary(candidate)).await {
                Ok(Ok(true)) => return Ok(index),
                Ok(Ok(false)) => answers.push(format!("{}: a standby", self.names[index])),
                Ok(Err(error)) => answers.push(format!("{}: {error}", self.names[index])),
                Err(_) => answers.push(format!(
                    "{}: no answer within {:?}",
                    self.names[index], self.patience
                )),
            }
        }
        Err(StoreError::backend(
            BACKEND,
            op,
            key,
            NoPrimary {
                answers: answers.join("; "),
            },
        ))
    }
}

/// Whether the server of `options` accepts writes.
async fn is_primary(options: &PgConnectOptions) -> Result<bool, sqlx::Error> {
    let mut connection = PgConnection::connect_with(options).await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut connection)
        .await?;
    let _ = connection.close().await;
    Ok(!in_recovery)
}

/// Whether a call that failed with `error` says the primary may have changed: the connection
/// broke or could not be had, the server is shutting down or starting, it refuses writes (a
/// standby), or the call outlived its deadline. A refused patch, a lock wait or a malformed
/// record say nothing about it.
fn primary_may_be_gone(error: &StoreError) -> bool {
    let StoreError::Backend { source, .. } = error else {
        return false;
    };
    if error.is_deadline() {
        return true;
    }
    match source.downcast_ref::<sqlx::Error>() {
        Some(
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed,
        ) => true,
        // 08: connection exceptions; 57P01-57P03: shutting down, crashed, starting;
        // 25006: a read-only transaction (the server is a standby now).
        Some(sqlx::Error::Database(error)) => error.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "25006"
        }),
        _ => false,
    }
}

/// No host of the URL accepts writes now (during a failover, before a standby is promoted).
#[derive(Debug, thiserror::Error)]
#[error("no host accepts writes ({answers})")]
struct NoPrimary {
    answers: String,
}

/// Splits a URL naming several hosts (`postgres://user@a:1,b:2/db?...`) into one URL per
/// host, and takes out `target_session_attrs` (only `read-write` and `primary`, what a store
/// that writes needs, are accepted). `None` for a URL of one host without that parameter: it
/// is used as it is.
pub(super) fn split_hosts(url: &str) -> Result<Option<Vec<String>>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut wants_primary = false;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => match value {
                "read-write" | "primary" => wants_primary = true,
                other => {
                    return Err(format!(
                        "target_session_attrs={other}: a session store writes, so only read-write or primary"
                    ));
                }
            },
            _ => kept.push(pair),
        }
    }
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.len() == 1 && !wants_primary {
        return Ok(None);
    }
    if hosts.iter().any(|host| host.is_empty()) {
        return Err(format!("an empty host in {authority:?}"));
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    Ok(Some(
        hosts
            .into_iter()
            .map(|host| match user {
                Some(user) => format!("{scheme}://{user}@{host}{path}{query}"),
                None => format!("{scheme}://{host}{path}{query}"),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DeadlineExceeded;

    #[test]
    fn one_host_is_used_as_it_is() {
        assert_eq!(
            split_hosts("postgres://u@a:5432/db?sslmode=disable"),
            Ok(None)
        );
    }

    #[test]
    fn several_hosts_become_one_url_each_with_the_rest_kept() {
        assert_eq!(
            split_hosts(
                "postgres://u:p@a:1,b:2/db?sslmode=disable&target_session_attrs=read-write"
            ),
            Ok(Some(vec![
                "postgres://u:p@a:1/db?sslmode=disable".to_owned(),
                "postgres://u:p@b:2/db?sslmode=disable".to_owned(),
            ]))
        );
        assert_eq!(
            split_hosts("postgresql://[::1]:1,b/db"),
            Ok(Some(vec![
                "postgresql://[::1]:1/db".to_owned(),
                "postgresql://b/db".to_owned(),
            ]))
        );
    }

    #[test]
    fn one_host_asking_for_the_primary_is_checked_too() {
        assert_eq!(
            split_hosts("postgres://a/db?target_session_attrs=primary"),
            Ok(Some(vec!["postgres://a/db".to_owned()]))
        );
    }

    #[test]
    fn a_target_that_may_be_a_standby_is_refused() {
        let error = split_hosts("postgres://a,b/db?target_session_attrs=any").unwrap_err();
        assert!(error.contains("only read-write or primary"), "{error}");
        assert!(split_hosts("postgres://a,,b/db").is_err());
    }

    #[test]
    fn what_says_the_primary_may_be_gone() {
        let io = StoreError::backend(
            BACKEND,
            StoreOp::Apply,
            "k",
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        );
        assert!(primary_may_be_gone(&io));
        let late = StoreError::backend(
            BACKEND,
            StoreOp::Load,
            "k",
            DeadlineExceeded::new(BACKEND, Duration::from_secs(1)),
        );
        assert!(primary_may_be_gone(&late));
        let conflict = StoreError::Conflict {
            backend: BACKEND,
            key: "k".to_owned(),
            fields: vec!["count".to_owned()],
            current: None,
        };
        assert!(!primary_may_be_gone(&conflict));
        let absent = StoreError::backend(BACKEND, StoreOp::Load, "k", sqlx::Error::RowNotFound);
        assert!(!primary_may_be_gone(&absent));
    }
}
