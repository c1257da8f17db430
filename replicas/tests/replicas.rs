//! Replicas as real OS processes: three `replica` processes share one store and one chat, each
//! delivering 1,000 increments of the same field, every 13th save failing, each update
//! delivered again until acknowledged. Whatever the interleaving, the stored count equals the
//! number of acknowledged updates exactly, never goes backwards while they run, and every
//! refused write was reported to the process that made it. Then three replicas on chats of
//! their own deliver every 7th update twice, as after a crash between the save and the
//! answer: each update counts once.
//!
//! In exclusive mode across processes (a lease per key in the store), the same shared-chat
//! run has no conflict at all; a lease holder killed with SIGKILL while it holds the key
//! leaves a lease the others take over once it runs out; a holder paused with SIGSTOP past its
//! lease and resumed has its save refused and runs the update again. In each, the stored count
//! equals the acknowledged updates exactly.
//!
//! Under contention, three replicas keep 20 updates of one chat in flight each, every 13th
//! save failing and every 17th applied but answered with a deadline error, each failed update
//! delivered again at once; every process writes its history, and the exactly-once checker
//! judges the merged histories against the stored count.
//!
//! Server-backed cases read `POSTGRES_URL`, `MYSQL_URL`, `REDIS_URL`, `REDIS_CLUSTER_URLS`
//! and `MONGODB_URL`;
//! without one, the case prints `SKIPPED replicas::<store>` and passes, unless
//! `TYPED_SESSION_REQUIRE_SERVERS` is set (as `.ci/run` does).

#[path = "../../tests/common/history.rs"]
mod history;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use typed_session::{MongoStore, MySqlStore, PostgresStore, RedisStore, SqliteStore, Store};

const PROCESSES: usize = 3;
const UPDATES: u64 = 1_000;
const USER: i64 = 4242;

fn url(var: &str, store: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("TYPED_SESSION_REQUIRE_SERVERS").is_some() => {
            panic!("replicas::{store} needs {var}, and TYPED_SESSION_REQUIRE_SERVERS is set")
        }
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED replicas::{store}: {var} is not set"
            );
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// The count the store holds for `user`'s private chat.
async fn stored_count(observer: &dyn Store, user: i64) -> u64 {
    count(
        observer
            .load(&format!("Tally:{user}:{user}"))
            .await
            .expect("load"),
    )
}

fn count(record: Option<typed_session::store::Record>) -> u64 {
    record
        .and_then(|r| r.get("count").map(|c| c.parse().expect("a count")))
        .unwrap_or(0)
}

/// Starts replica `i`, with update ids of its own, on user `user`'s private chat.
fn spawn(
    kind: &str,
    url: &str,
    table: &str,
    user: i64,
    i: usize,
    updates: u64,
    redeliver_every: Option<u64>,
) -> Child {
    replica(kind, url, table, user, i, updates, redeliver_every, &[])
}

/// The first update id of replica `i`.
fn first_id(i: usize) -> u64 {
    i as u64 * 1_000_000 + 1
}

#[allow(clippy::too_many_arguments)]
fn replica(
    kind: &str,
    url: &str,
    table: &str,
    user: i64,
    i: usize,
    updates: u64,
    redeliver_every: Option<u64>,
    extra: &[String],
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_replica"));
    command
        .args(["--store", kind, "--url", url, "--table", table])
        .args([
            "--user",
            &user.to_string(),
            "--updates",
            &updates.to_string(),
        ])
        .args(["--first-id", &first_id(i).to_string()])
        .args(["--fail-every", "13"])
        .args(extra)
        .stdout(Stdio::piped());
    if let Some(every) = redeliver_every {
        command.args(["--redeliver-every", &every.to_string()]);
    }
    command.spawn().expect("the replica binary starts")
}

/// What a replica reported in its last line.
async fn report(child: Child) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("no panic")
        .expect("the replica runs");
    assert!(output.status.success(), "a replica failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().expect("the replica printed");
    serde_json::from_str(last).expect("the replica's JSON line")
}

/// Reads a replica's output until it says it holds the key; returns how many updates it
/// acknowledged before, and the rest of its output, read on a thread of its own until it
/// ends.
async fn until_holding(child: &mut Child) -> (u64, std::thread::JoinHandle<String>) {
    let stdout = child.stdout.take().expect("piped");
    tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut acked = 0;
        for line in lines.by_ref() {
            let line = line.expect("the replica's output");
            if line.starts_with("holding") {
                let rest = std::thread::spawn(move || {
                    lines.map_while(Result::ok).last().unwrap_or_default()
                });
                return (acked, rest);
            }
            acked += u64::from(line.starts_with("ack "));
        }
        panic!("the replica ended before it held the key")
    })
    .await
    .expect("no panic")
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to a replica.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// The arguments of exclusive mode across processes: the lease's term, how long it is kept
/// after an update (none: released), and the update to hold the key in, and for how long.
fn lease_args(lease_ms: u64, keep_ms: Option<u64>, hold: Option<(u64, u64)>) -> Vec<String> {
    let mut args = vec!["--lease-ms".to_owned(), lease_ms.to_string()];
    if let Some(keep) = keep_ms {
        args.extend(["--keep-lease-ms".to_owned(), keep.to_string()]);
    }
    if let Some((at, ms)) = hold {
        args.extend([
            "--hold-at".to_owned(),
            at.to_string(),
            "--hold-ms".to_owned(),
            ms.to_string(),
        ]);
    }
    args
}

/// Exclusive mode across processes: three replicas on one chat, every 13th store write
/// failing (lease claims included): no conflict ever, and every increment stored once. With
/// `keep` the replicas keep each lease for that long after an update: the same holds, and
/// some updates read nothing (the next update of a replica that still holds the key); without
/// it, every update reads the record as it claims the lease.
async fn exclusive(
    kind: &str,
    url: &str,
    table: &str,
    observer: Arc<dyn Store>,
    updates: u64,
    keep: Option<u64>,
) {
    let user = USER + if keep.is_some() { 15 } else { 10 };
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            replica(
                kind,
                url,
                table,
                user,
                i,
                updates,
                None,
                &lease_args(2_000, keep, None),
            )
        })
        .collect();
    let (mut acked, mut conflicts, mut failed, mut loads, mut unloaded) = (0, 0, 0, 0, 0);
    for child in children {
        let line = report(child).await;
        let field = |name: &str| line[name].as_u64().expect("a count");
        acked += field("acked");
        conflicts += field("conflicts") + field("conflicts_counted");
        failed += field("failed_saves") + field("failed_loads");
        loads += field("loads");
        unloaded += field("unloaded");
    }
    let stored = stored_count(&*observer, user).await;
    eprintln!(
        "replicas::{kind} exclusive (lease kept for {keep:?} ms): {PROCESSES} processes x {updates} updates: \
         acknowledged {acked}, stored {stored}, conflicts {conflicts}, failed loads and saves {failed}, \
         loads {loads} (a replica waiting for the lease counts each look at it), updates that read nothing {unloaded}"
    );
    assert_eq!(acked, PROCESSES as u64 * updates);
    assert_eq!(stored, acked, "stored equals acknowledged, exactly");
    assert_eq!(
        conflicts, 0,
        "one writer at a time: nothing to conflict with"
    );
    assert!(failed > 0, "the injected failures happened");
    // Loads alone do not tell it: how often a waiting replica looks at the lease depends on
    // the store's speed. An update acknowledged with no read at all does.
    if keep.is_some() {
        assert!(
            unloaded > 0,
            "updates under a kept lease load nothing: none of {acked} did"
        );
    } else {
        assert_eq!(
            unloaded, 0,
            "without a kept lease every update claims and reads it"
        );
    }
}

/// A replica killed (SIGKILL) while it holds the key's lease: the two others wait for the
/// lease to run out, take it over, and finish; nothing acknowledged is lost. With `keep`,
/// every replica keeps its leases between updates, and the others wait for each other's.
async fn killed_holder(
    kind: &str,
    url: &str,
    table: &str,
    observer: Arc<dyn Store>,
    updates: u64,
    keep: Option<u64>,
) {
    let user = USER + if keep.is_some() { 25 } else { 20 };
    let lease = 1_000;
    let mut holder = replica(
        kind,
        url,
        table,
        user,
        0,
        10,
        None,
        &lease_args(lease, keep, Some((first_id(0) + 2, 600_000))),
    );
    let (acked_before, _rest) = until_holding(&mut holder).await;
    let others: Vec<_> = (1..PROCESSES)
        .map(|i| {
            replica(
                kind,
                url,
                table,
                user,
                i,
                updates,
                None,
                &lease_args(lease, keep, None),
            )
        })
        .collect();
    signal(&holder, "KILL");
    let _ = holder.wait();
    let (mut acked, mut takeovers) = (acked_before, 0);
    for child in others {
        let line = report(child).await;
        acked += line["acked"].as_u64().expect("a count");
        takeovers += line["lease_takeovers"].as_u64().expect("a count");
    }
    let stored = stored_count(&*observer, user).await;
    eprintln!(
        "replicas::{kind} lease holder killed (lease kept for {keep:?} ms): acknowledged {acked} ({acked_before} by the killed one), \
         stored {stored}, lease take-overs {takeovers}"
    );
    assert_eq!(acked, acked_before + (PROCESSES as u64 - 1) * updates);
    assert_eq!(stored, acked, "stored equals acknowledged, exactly");
    if keep.is_none() {
        // With kept leases the killed holder may have been running its update under the
        // lease its previous update kept, which reads as kept until it is renewed: running
        // out then is not told apart from a holder that went idle.
        assert!(takeovers >= 1, "the killed holder's lease was taken over");
    }
}

/// A replica paused (SIGSTOP) while it holds the key's lease, past its end: another takes the
/// lease over and finishes; resumed (SIGCONT), the paused one's save is refused, and its
/// update runs again and counts once.
async fn paused_holder(kind: &str, url: &str, table: &str, observer: Arc<dyn Store>, updates: u64) {
    let user = USER + 30;
    let lease = 500;
    let mut zombie = replica(
        kind,
        url,
        table,
        user,
        0,
        3,
        None,
        &lease_args(lease, None, Some((first_id(0) + 1, 1_500))),
    );
    let (_, last_line) = until_holding(&mut zombie).await;
    signal(&zombie, "STOP");
    let other = replica(
        kind,
        url,
        table,
        user,
        1,
        updates,
        None,
        &lease_args(lease, None, None),
    );
    let other = report(other).await;
    signal(&zombie, "CONT");
    let status = tokio::task::spawn_blocking(move || zombie.wait())
        .await
        .expect("no panic")
        .expect("the replica runs");
    assert!(status.success(), "the resumed replica failed: {status:?}");
    let last_line = last_line.join().expect("the reader thread");
    let zombie: serde_json::Value =
        serde_json::from_str(&last_line).expect("the replica's JSON line");
    let field = |line: &serde_json::Value, name: &str| line[name].as_u64().expect("a count");
    let acked = field(&zombie, "acked") + field(&other, "acked");
    let stored = stored_count(&*observer, user).await;
    eprintln!(
        "replicas::{kind} lease holder paused past its lease: acknowledged {acked}, stored {stored}, \
         take-overs {}, refused saves of the resumed holder {}",
        field(&other, "lease_takeovers"),
        field(&zombie, "leases_lost"),
    );
    assert_eq!(acked, 3 + updates);
    assert_eq!(stored, acked, "stored equals acknowledged, exactly");
    assert!(
        field(&other, "lease_takeovers") >= 1,
        "the paused holder's lease was taken over"
    );
    assert!(
        field(&zombie, "leases_lost") >= 1,
        "the resumed holder's save was refused"
    );
}

/// Three replicas, each on a chat of its own, each delivering every 7th acknowledged update
/// once more (its answer was lost after the save): the second delivery is recognised and
/// counts nothing.
async fn redeliveries(kind: &str, url: &str, table: &str, observer: Arc<dyn Store>, updates: u64) {
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| spawn(kind, url, table, USER + 1 + i as i64, i, updates, Some(7)))
        .collect();
    let mut redelivered = 0;
    for (i, child) in children.into_iter().enumerate() {
        let line = report(child).await;
        let field = |name: &str| line[name].as_u64().expect("a count");
        let user = USER + 1 + i as i64;
        let stored = stored_count(&*observer, user).await;
        assert_eq!(
            field("acked"),
            updates + field("redelivered"),
            "every delivery answered"
        );
        assert_eq!(
            stored, updates,
            "each update counted once, its second delivery not"
        );
        assert_eq!(field("redeliveries_recognised"), field("redelivered"));
        redelivered += field("redelivered");
    }
    eprintln!(
        "replicas::{kind}: {PROCESSES} processes x {updates} updates, {redelivered} delivered twice after their save: each counted once"
    );
    assert!(redelivered > 0);
}

/// Every run on one store: replicas sharing a chat, redeliveries, then exclusive mode across
/// processes with its faults.
async fn both(
    kind: &str,
    url: &str,
    table: &str,
    observer: Arc<dyn Store>,
    updates: u64,
    redelivered_updates: u64,
) {
    write_skew(kind, url, table, Arc::clone(&observer), "checked").await;
    write_skew(kind, url, table, Arc::clone(&observer), "cached").await;
    replicas(kind, url, table, Arc::clone(&observer), updates, "checked").await;
    replicas(kind, url, table, Arc::clone(&observer), updates, "cached").await;
    contended(kind, url, table, Arc::clone(&observer), redelivered_updates).await;
    redeliveries(kind, url, table, Arc::clone(&observer), redelivered_updates).await;
    for keep in [None, Some(300)] {
        exclusive(kind, url, table, Arc::clone(&observer), updates, keep).await;
        killed_holder(
            kind,
            url,
            table,
            Arc::clone(&observer),
            redelivered_updates / 3,
            keep,
        )
        .await;
    }
    paused_holder(
        kind,
        url,
        table,
        Arc::clone(&observer),
        redelivered_updates / 3,
    )
    .await;
    // Long enough that the replicas are still writing when the erasure (a scan of the whole
    // keyspace, every master on a cluster) has finished.
    erased_midway(kind, url, table, observer, 2 * redelivered_updates).await;
}

/// Write skew across processes: in each of 20 chats, one process takes Alice off call if Bob
/// is on call while another takes Bob off call if Alice is; each reads before either writes
/// (they meet in between, see `src/bin/replica.rs`). The two writes touch different fields, so
/// only a patch that also expects the version of the field its update read refuses the
/// second: at least one doctor stays on call in every chat.
async fn write_skew(kind: &str, url: &str, table: &str, observer: Arc<dyn Store>, freshness: &str) {
    const ROUNDS: i64 = 20;
    let first_user: i64 = if freshness == "cached" {
        890_001
    } else {
        880_001
    };
    let meet = std::env::temp_dir().join(unique("typed_session_meet"));
    std::fs::create_dir_all(&meet).expect("a temp dir");
    let children: Vec<_> = ["alice", "bob"]
        .iter()
        .enumerate()
        .map(|(i, doctor)| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_replica"));
            command
                .args(["--store", kind, "--url", url, "--table", table])
                .args(["--user", &first_user.to_string()])
                .args(["--freshness", freshness])
                .args(["--updates", "0", "--first-id", &first_id(i).to_string()])
                .args(["--on-call", doctor, "--rounds", &ROUNDS.to_string()])
                .arg("--meet")
                .arg(&meet)
                .stdout(Stdio::piped());
            command.spawn().expect("the replica binary starts")
        })
        .collect();
    for child in children {
        let line = report(child).await;
        assert_eq!(
            line["acked"].as_i64(),
            Some(ROUNDS),
            "every update acknowledged"
        );
    }
    let _ = std::fs::remove_dir_all(&meet);
    let on_call = |record: &Option<typed_session::store::Record>, doctor: &str| {
        record
            .as_ref()
            .and_then(|r| r.get(doctor))
            .is_none_or(|value| value == "true")
    };
    let mut nobody = Vec::new();
    for user in first_user..first_user + ROUNDS {
        let record = observer
            .load(&format!("Ward:{user}:{user}"))
            .await
            .expect("load");
        if !on_call(&record, "alice") && !on_call(&record, "bob") {
            nobody.push(user);
        }
    }
    eprintln!(
        "replicas::{kind}: write skew ({freshness}): {} of {ROUNDS} chats left with nobody on call",
        nobody.len()
    );
    assert!(
        nobody.is_empty(),
        "both doctors went off call in chats {nobody:?}: a write based on a read another process had changed was committed"
    );
}

/// The session type the replicas write (`Tally` in `src/bin/replica.rs`): same name, same
/// namespace, same field.
#[derive(typed_session::Session)]
struct Tally {
    count: u64,
}

/// Erasure across processes: two replicas increment one chat's count while this process (an
/// operator's tool, as far as they know) erases the user. Every increment acknowledged before
/// the erasure began is gone with it, and none comes back through an update that was in flight
/// across it: the stored count is at most the updates acknowledged after the erasure began.
async fn erased_midway(kind: &str, url: &str, table: &str, observer: Arc<dyn Store>, updates: u64) {
    const ERASED: i64 = 777_001;
    let acked = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut running = Vec::new();
    for i in 0..2 {
        let mut child = spawn(kind, url, table, ERASED, 10 + i, updates, None);
        let stdout = child.stdout.take().expect("piped");
        let (acked, tx) = (Arc::clone(&acked), tx.clone());
        let reader = std::thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ack ") {
                    acked.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(());
                }
                last = line;
            }
            last
        });
        running.push((child, reader));
    }
    drop(tx);
    while acked.load(Ordering::SeqCst) < 100 && rx.recv().await.is_some() {}
    let before = acked.load(Ordering::SeqCst);
    let sessions = typed_session::SessionMiddleware::<Tally, typed_session::telegram::Update>::new(
        Arc::clone(&observer),
    );
    let erased = sessions.erase_user(ERASED).await.expect("erase");
    assert_eq!(erased.sessions.len(), 1, "{erased:?}");
    // Only for the report: the reader threads may lag behind the replicas' output.
    let after = acked.load(Ordering::SeqCst);

    let mut total = 0;
    for (mut child, reader) in running {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("no panic")
            .expect("the replica runs");
        assert!(status.success(), "a replica failed: {status:?}");
        let last = reader.join().expect("the reader ends");
        let line: serde_json::Value = serde_json::from_str(&last).expect("the replica's JSON line");
        total += line["acked"].as_u64().expect("a count");
    }
    let stored = stored_count(&*observer, ERASED).await;
    eprintln!(
        "replicas::{kind}: erased after {before} of {total} acknowledged updates (about {after} when it returned); stored {stored}"
    );
    assert_eq!(total, 2 * updates, "each update acknowledged once");
    assert!(
        stored <= total - before,
        "the count holds {stored}, more than the {} updates acknowledged after the erasure began: \
         erased increments came back",
        total - before
    );
}

/// Exactly once under contention, judged over the processes' histories: three replicas keep
/// 20 updates of one chat in flight each (every 13th save failing before the store, every
/// 17th applied and answered with a deadline error), each failed update delivered again at
/// once until acknowledged.
async fn contended(kind: &str, url: &str, table: &str, observer: Arc<dyn Store>, updates: u64) {
    const CONTENDED: i64 = 515_001;
    let dir = std::env::temp_dir().join(unique("typed_session_histories"));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            let history = dir.join(format!("replica-{i}.history"));
            let extra = [
                "--concurrent".to_owned(),
                "20".to_owned(),
                "--timeout-every".to_owned(),
                "17".to_owned(),
                "--history".to_owned(),
                history.display().to_string(),
            ];
            replica(kind, url, table, CONTENDED, i, updates, None, &extra)
        })
        .collect();
    let mut acked = 0;
    let mut recognised = 0;
    for child in children {
        let line = report(child).await;
        acked += line["acked"].as_u64().expect("a count");
        recognised += line["redeliveries_recognised"].as_u64().expect("a count");
    }
    let mut events = Vec::new();
    for i in 0..PROCESSES {
        let text = std::fs::read_to_string(dir.join(format!("replica-{i}.history")))
            .expect("the replica wrote its history");
        for line in text.lines() {
            events.push(history::Event::from_line(line).expect("a history line"));
        }
    }
    let stored = stored_count(&*observer, CONTENDED).await;
    let retried = events
        .iter()
        .filter(|e| e.outcome != history::Outcome::Saved)
        .count();
    eprintln!(
        "replicas::{kind}: contended, {PROCESSES} processes x {updates} updates, 20 in flight each: \
         {} deliveries ({retried} not saved at once, {recognised} recognised redeliveries), \
         acknowledged {acked}, stored {stored}",
        events.len()
    );
    let violations = history::check_counter(&events, stored);
    if violations.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        violations.is_empty(),
        "replicas::{kind}: the history breaks exactly-once (histories kept in {}):\n{}",
        dir.display(),
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        acked,
        PROCESSES as u64 * updates,
        "each update acknowledged"
    );
    assert!(
        retried > 0,
        "the replicas contended, and faults were injected"
    );
}

/// Runs the replicas against `store`, seen by the test through `observer`.
async fn replicas(
    kind: &str,
    url: &str,
    table: &str,
    observer: Arc<dyn Store>,
    updates: u64,
    freshness: &str,
) {
    // A chat of its own per mode.
    let user = if freshness == "cached" {
        USER + 40
    } else {
        USER
    };
    let key = format!("Tally:{user}:{user}");
    let extra = ["--freshness".to_owned(), freshness.to_owned()];
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| replica(kind, url, table, user, i, updates, None, &extra))
        .collect();

    // Watch the stored count while they run: it never goes backwards.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (observer, done, key) = (Arc::clone(&observer), Arc::clone(&done), key.clone());
        async move {
            let (mut last, mut reads) = (0, 0_u64);
            while !done.load(Ordering::Acquire) {
                let now = count(observer.load(&key).await.expect("the observer reads"));
                assert!(
                    now >= last,
                    "the stored count went back from {last} to {now}"
                );
                (last, reads) = (now, reads + 1);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reads
        }
    });

    let mut acked = 0;
    let mut conflicts = 0;
    let mut failed_saves = 0;
    for child in children {
        let line = report(child).await;
        let field = |name: &str| line[name].as_u64().expect("a count");
        assert_eq!(
            field("conflicts"),
            field("conflicts_counted"),
            "every conflict was surfaced to the update that met it"
        );
        acked += field("acked");
        conflicts += field("conflicts");
        failed_saves += field("failed_saves");
    }
    done.store(true, Ordering::Release);
    let reads = watcher.await.expect("the count never went backwards");

    let stored = count(observer.load(&key).await.expect("load"));
    eprintln!(
        "replicas::{kind} ({freshness}): {PROCESSES} processes x {updates} updates: acknowledged {acked}, stored {stored}, \
         conflicts {conflicts}, failed saves {failed_saves}, watcher reads {reads}"
    );
    assert_eq!(
        acked,
        PROCESSES as u64 * updates,
        "each update acknowledged once"
    );
    assert_eq!(stored, acked, "stored equals acknowledged, exactly");
    assert!(failed_saves > 0, "the injected failures happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file() {
    let dir = std::env::temp_dir().join(unique("typed_session_replicas"));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let url = format!("sqlite://{}", dir.join("bot.db").display());
    let observer = SqliteStore::connect(&url).await.expect("connect");
    observer.migrate().await.expect("migrate");
    both(
        "sqlite",
        &url,
        "typed_sessions",
        Arc::new(observer),
        UPDATES,
        300,
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(url) = url("POSTGRES_URL", "postgres") else {
        return;
    };
    let table = unique("replicas");
    let observer = PostgresStore::connect(&url)
        .await
        .expect("connect")
        .with_table(&table)
        .expect("table");
    observer.migrate().await.expect("migrate");
    both("postgres", &url, &table, Arc::new(observer), UPDATES, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    let Some(url) = url("MYSQL_URL", "mysql") else {
        return;
    };
    let table = unique("replicas");
    let observer = MySqlStore::connect(&url)
        .await
        .expect("connect")
        .with_table(&table)
        .expect("table");
    observer.migrate().await.expect("migrate");
    both("mysql", &url, &table, Arc::new(observer), UPDATES, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let Some(url) = url("REDIS_URL", "redis") else {
        return;
    };
    let prefix = format!("{}:", unique("replicas"));
    let observer = RedisStore::connect(&url)
        .await
        .expect("connect")
        .with_prefix(&prefix);
    both("redis", &url, &prefix, Arc::new(observer), UPDATES, 300).await;
}

/// The same on a Redis Cluster (`REDIS_CLUSTER_URLS`: node URLs, comma-separated): each
/// process reaches the session's node through its own cluster connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    let Some(urls) = url("REDIS_CLUSTER_URLS", "redis-cluster") else {
        return;
    };
    let prefix = format!("{}:", unique("replicas"));
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    let observer = RedisStore::connect_cluster(&nodes)
        .await
        .expect("connect")
        .with_prefix(&prefix);
    both(
        "redis-cluster",
        &urls,
        &prefix,
        Arc::new(observer),
        UPDATES,
        300,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb() {
    let Some(url) = url("MONGODB_URL", "mongodb") else {
        return;
    };
    let collection = unique("replicas");
    let observer = MongoStore::connect(&url, "typed_session_test")
        .await
        .expect("connect")
        .with_collection(&collection)
        .expect("collection");
    // SecantusDB, the MongoDB stand-in here, is a Python server: a smaller run.
    both("mongodb", &url, &collection, Arc::new(observer), 200, 100).await;
}
