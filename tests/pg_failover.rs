//! PostgreSQL loses its primary under load: a primary and a streaming standby of the test's
//! own (`scripts/pg-standby.sh`, on spare ports) serve 24 sessions through one
//! `PostgresStore` given both hosts; the primary's processes are killed with SIGKILL while
//! updates keep coming, each failed update delivered again as Telegram does, and the standby
//! is promoted a moment later (as a failover manager would). Every delivery goes into a
//! history, and the exactly-once checker judges each key's (`common::history`). Measured and
//! reported: the pause until updates go through again, acknowledged against stored.
//!
//! With synchronous replication a commit is acknowledged, and seen by other reads, only once
//! the standby has it: nothing acknowledged may be lost, also when the standby was stopped
//! before the primary died. With asynchronous replication, what the primary acknowledged and
//! had not sent is lost with it (reported, not asserted).
//!
//! Needs PostgreSQL's server binaries (`initdb`, `pg_ctl`, `pg_basebackup`) and `psql` on the
//! `PATH`; without them the test prints `SKIPPED pg_failover::<test>` and passes, unless
//! `TYPED_SESSION_REQUIRE_SERVERS` is set.
#![cfg(all(feature = "postgres", feature = "telegram"))]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Counter;
use common::failover::{Load, Written, deliveries, stored_count, violations_of};
use typed_session::sqlx::{Connection, PgConnection};
use typed_session::store::SqlOptions;
use typed_session::telegram::Update;
use typed_session::{PostgresStore, SessionMiddleware};

const USERS: i64 = 24;

/// A primary and a standby of this test's own, stopped when it ends.
struct OwnPair {
    dir: PathBuf,
    primary: u16,
    standby: u16,
}

impl OwnPair {
    fn start(test: &str, mode: &str) -> Option<Self> {
        if let Err(missing) = which("initdb").and(which("pg_basebackup")) {
            if std::env::var_os("TYPED_SESSION_REQUIRE_SERVERS").is_some() {
                panic!("pg_failover::{test} needs PostgreSQL's server binaries: {missing}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED pg_failover::{test}: {missing}");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("typed-session-pg-{}-{test}", std::process::id()));
        let pair = OwnPair {
            dir,
            primary: free_port(),
            standby: free_port(),
        };
        let out = pair
            .script()
            .args(["start", mode])
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/pg-standby.sh start {mode}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(pair)
    }

    fn script(&self) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-standby.sh"))
            .env("PG_PAIR_DIR", &self.dir)
            .env("PG_PRIMARY_PORT", self.primary.to_string())
            .env("PG_STANDBY_PORT", self.standby.to_string());
        command
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/test?target_session_attrs=read-write",
            self.primary, self.standby
        )
    }

    /// The PIDs of `node`'s postmaster and of its children (backends, walsender, walreceiver).
    fn processes(&self, node: &str) -> Vec<String> {
        let pidfile = self.dir.join(node).join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile).expect("postmaster.pid");
        let postmaster = text.lines().next().expect("a PID").trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("pgrep runs");
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        pids
    }

    /// Sends `signal` to every process of `node` at once. A child may exit between the
    /// listing and the signal (a backend ending, the walsender just terminated), so `kill`'s
    /// status is not the check: the postmaster is (there, for `-STOP`/`-CONT`; gone, for
    /// `-KILL`).
    fn signal(&self, node: &str, signal: &str) {
        let processes = self.processes(node);
        let _ = Command::new("kill")
            .arg(signal)
            .args(&processes)
            .status()
            .expect("kill runs");
        let postmaster = Path::new("/proc").join(&processes[0]);
        if signal == "-KILL" {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            // Gone, or a zombie until its parent reaps it.
            while std::fs::read_to_string(postmaster.join("stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{node} survived SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            assert!(postmaster.exists(), "{node}'s postmaster is not running");
        }
    }

    /// Ends the primary's walsenders: what the primary writes from now on is in no socket
    /// to the standby either (stopped alone, the standby would read it there on resuming).
    async fn cut_replication(&self) {
        let url = format!("postgres://postgres@127.0.0.1:{}/test", self.primary);
        let mut primary = <PgConnection as Connection>::connect(&url)
            .await
            .expect("connect to the primary");
        let ended: i64 = typed_session::sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_replication",
        )
        .fetch_one(&mut primary)
        .await
        .expect("pg_terminate_backend");
        assert_eq!(ended, 1, "one walsender ended");
    }

    /// Promotes the standby and returns once it accepts writes.
    async fn promote(&self) {
        let url = format!("postgres://postgres@127.0.0.1:{}/test", self.standby);
        let mut standby = <PgConnection as Connection>::connect(&url)
            .await
            .expect("connect to the standby");
        let promoted: bool = typed_session::sqlx::query_scalar("SELECT pg_promote(true, 30)")
            .fetch_one(&mut standby)
            .await
            .expect("pg_promote");
        assert!(promoted, "the standby was not promoted within 30 s");
    }
}

impl Drop for OwnPair {
    fn drop(&mut self) {
        let _ = self.script().arg("stop").status();
    }
}

fn which(program: &str) -> Result<(), String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map_err(|e| e.to_string())?;
    if found.status.success() {
        Ok(())
    } else {
        Err(format!("{program} is not on the PATH"))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_synchronous_standby_a_primary_killed_under_load_loses_nothing_acknowledged() {
    let lost = failover("synchronous", "sync", None).await;
    assert!(lost.is_none_or(|lost| lost == 0), "{lost:?} lost");
}

/// The standby stopped (SIGSTOP, every process) and its stream cut for 2 s, then the primary
/// killed: the
/// primary's commits of that time wait for the standby and are never acknowledged; their
/// updates fail and are delivered again to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_synchronous_standby_that_lags_a_primary_killed_loses_nothing_acknowledged() {
    let lost = failover("synchronous_lagging", "sync", Some(Duration::from_secs(2))).await;
    assert!(lost.is_none_or(|lost| lost == 0), "{lost:?} lost");
}

/// The same fault with asynchronous replication: what the primary acknowledged while the
/// standby was stopped is on no other server, and is lost with it (reported, not asserted:
/// it is what asynchronous replication means). Nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_asynchronous_standby_that_lags_a_primary_killed_loses_what_only_it_held() {
    let lost = failover(
        "asynchronous_lagging",
        "async",
        Some(Duration::from_secs(2)),
    )
    .await;
    eprintln!("pg_failover: asynchronous, standby stopped, then primary killed: {lost:?} lost");
}

/// Runs the load, kills the primary under it (with `stall`, after stopping the standby and
/// cutting its stream for that long; it resumes right after the kill), promotes the standby 500 ms after the kill;
/// returns how many acknowledged updates are not stored (`None` when skipped).
async fn failover(test: &str, mode: &str, stall: Option<Duration>) -> Option<u64> {
    let pair = OwnPair::start(test, mode)?;
    let options = SqlOptions::default().timeout(Duration::from_millis(500));
    let store = PostgresStore::connect_with(&pair.url(), options)
        .await
        .expect("connect to the pair");
    store.migrate().await.expect("migrate");
    let sessions = SessionMiddleware::<Counter, Update>::new(store.clone());
    let load = Load::start(&sessions, USERS);

    load.loaded().await;
    if let Some(stall) = stall {
        pair.signal("standby", "-STOP");
        pair.cut_replication().await;
        // The fault's length: how long the standby hears nothing.
        tokio::time::sleep(stall).await;
    }
    pair.signal("primary", "-KILL");
    let killed_at = load.fault();
    if stall.is_some() {
        pair.signal("standby", "-CONT");
    }
    // A failover manager's detection time, shortened: the store meanwhile finds no primary.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pair.promote().await;
    let promoted_after = killed_at.elapsed();

    let (results, history) = load.finish().await;
    let done = killed_at.elapsed();

    let (mut acked_total, mut stored_total, mut lost, mut pause) = (0, 0, 0, Duration::ZERO);
    for &Written {
        user,
        acked,
        longest_after_fault,
    } in &results
    {
        let stored = stored_count(&store, user, acked).await;
        let violations = violations_of(&history, user, stored);
        if mode == "sync" {
            assert!(
                violations.is_empty(),
                "user {user}: {}",
                violations.join("; ")
            );
        }
        if stored < acked {
            eprintln!("pg_failover: user {user}: acknowledged {acked}, stored {stored}");
        }
        lost += acked - stored;
        acked_total += acked;
        stored_total += stored;
        pause = pause.max(longest_after_fault);
    }
    eprintln!(
        "pg_failover: primary killed under load ({mode}, standby stopped: {stall:?}), standby promoted {promoted_after:?} after; {} deliveries checked for exactly once; longest pause of an update {pause:?}; all {USERS} writers done {done:?} after the kill; acknowledged {acked_total}, stored {stored_total}, lost {lost}",
        deliveries(&history)
    );
    assert!(
        pause < Duration::from_secs(30),
        "the failover took {pause:?}"
    );
    Some(lost)
}
