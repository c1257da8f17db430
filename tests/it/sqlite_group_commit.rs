//! SQLite group commit (`SqliteStore::with_group_commit`): the patches of concurrent updates
//! share one transaction, and each caller is answered only after its commit.
#![cfg(feature = "sqlite")]

use crate::common;

use std::path::PathBuf;

use common::{Counter, incrementing};
use typed_session::store::Patch;
use typed_session::telegram::Update;
use typed_session::{SessionMiddleware, SqliteStore, Store};

/// A fresh WAL database file for `test`, opened twice: with group commit, and plainly (a
/// second connection, to see only what is committed).
async fn database(test: &str) -> (SqliteStore, SqliteStore, PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "typed-session-group-{test}-{}.db",
        std::process::id()
    ));
    common::remove_sqlite_file(&path);
    let url = format!("sqlite://{}", path.display());
    let grouped = SqliteStore::connect(&url)
        .await
        .expect("open")
        .with_group_commit(true);
    grouped.migrate().await.expect("migrate");
    let other = SqliteStore::connect(&url).await.expect("open again");
    (grouped, other, path)
}

/// The frames in the WAL file: each commit appends at least one.
fn wal_frames(store: &SqliteStore) -> i64 {
    store
        .connection()
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
        .expect("checkpoint")
}

fn empty_wal(store: &SqliteStore) {
    let _: i64 = store
        .connection()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .expect("truncate");
    assert_eq!(wal_frames(store), 0);
}

/// Polls `apply` once: a grouped patch yields before its commit, so it is not answered yet.
async fn assert_pending<F: std::future::Future + Unpin>(apply: &mut F) {
    tokio::select! {
        biased;
        _ = apply => panic!("answered before the others ready to run could join"),
        () = std::future::ready(()) => {}
    }
}

fn count(record: Option<typed_session::store::Record>) -> u64 {
    record
        .and_then(|r| r.get("count").and_then(|c| c.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn concurrent_updates_share_commits_and_every_acknowledged_one_is_stored() {
    const UPDATES: i64 = 300;
    const USERS: i64 = 30;
    let (grouped, other, path) = database("concurrent").await;
    empty_wal(&grouped);
    let sessions = SessionMiddleware::<Counter, Update>::new(grouped.clone());
    let chain = incrementing(&sessions);
    let mut updates = tokio::task::JoinSet::new();
    for id in 0..UPDATES {
        let chain = chain.clone();
        let user = id % USERS;
        updates.spawn(async move {
            chain
                .run_update(Update::text(id + 1, user, user, "+1"))
                .await
        });
    }
    let mut acknowledged = 0;
    while let Some(done) = updates.join_next().await {
        if done.expect("task").is_ok() {
            acknowledged += 1;
        }
    }
    assert_eq!(acknowledged, UPDATES, "every update succeeds");
    let mut stored = 0;
    for user in 0..USERS {
        let key = format!("Counter:{user}:{user}");
        stored += count(other.load(&key).await.expect("load"));
    }
    assert_eq!(
        stored, acknowledged as u64,
        "acknowledged = stored, seen from another connection"
    );
    let frames = wal_frames(&grouped);
    assert!(
        frames < UPDATES / 4,
        "{frames} WAL frames for {UPDATES} updates: commits were shared"
    );
    common::remove_sqlite_file(&path);
}

#[tokio::test]
async fn a_patch_is_answered_only_after_its_commit_and_a_load_of_its_key_commits_first() {
    let (grouped, other, path) = database("answered").await;
    // What the middleware writes: the field's version is its condition (0: never written).
    let patch = Patch::new()
        .set_field("count", "1")
        .expect_version("count", 0);
    let mut apply = grouped.apply("7:7", &patch);
    assert_pending(&mut apply).await;
    assert_eq!(
        other.load("7:7").await.expect("load"),
        None,
        "not committed yet"
    );
    assert_eq!(count(grouped.load("7:7").await.expect("load")), 1);
    assert_eq!(
        count(other.load("7:7").await.expect("load")),
        1,
        "the load of a key the open transaction wrote committed it first"
    );
    apply.await.expect("committed");
    common::remove_sqlite_file(&path);
}

#[tokio::test]
async fn a_caller_cancelled_while_waiting_still_has_its_patch_committed() {
    let (grouped, other, path) = database("cancelled").await;
    let patch = Patch::new()
        .set_field("count", "5")
        .expect_version("count", 0);
    let mut apply = grouped.apply("7:7", &patch);
    assert_pending(&mut apply).await;
    drop(apply);
    assert_eq!(
        count(other.load("7:7").await.expect("load")),
        5,
        "committed when its last caller went away: the write lock is not kept"
    );
    other
        .apply("8:8", &Patch::new().set_field("count", "1"))
        .await
        .expect("another connection can write");
    common::remove_sqlite_file(&path);
}

#[tokio::test]
async fn a_refused_patch_leaves_no_transaction_open() {
    let (grouped, other, path) = database("refused").await;
    let first = Patch::new()
        .set_field("count", "1")
        .expect_version("count", 0);
    grouped.apply("7:7", &first).await.expect("first");
    let stale = Patch::new()
        .set_field("count", "2")
        .expect_version("count", 7);
    let refused = grouped.apply("7:7", &stale).await;
    assert!(
        matches!(refused, Err(typed_session::StoreError::Conflict { .. })),
        "{refused:?}"
    );
    other
        .apply("8:8", &Patch::new().set_field("count", "1"))
        .await
        .expect("the write lock was given back");
    assert_eq!(count(grouped.load("7:7").await.expect("load")), 1);
    common::remove_sqlite_file(&path);
}

/// Another connection holds the write lock: a grouped patch cannot open its transaction, waits
/// for the lock off the runtime within the busy timeout, fails with a clear error when it
/// stays taken, and is written once it is free.
#[tokio::test]
async fn a_locked_database_is_waited_for_within_the_busy_timeout() {
    let (grouped, other, path) = database("locked").await;
    let grouped = grouped.with_busy_timeout(std::time::Duration::from_millis(100));
    other
        .connection()
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock");
    let patch = Patch::new()
        .set_field("count", "1")
        .expect_version("count", 0);
    let refused = grouped.apply("7:7", &patch).await;
    assert!(
        matches!(&refused, Err(typed_session::StoreError::Backend { .. })),
        "{refused:?}"
    );
    other
        .connection()
        .execute_batch("COMMIT")
        .expect("released");
    grouped
        .apply("7:7", &patch)
        .await
        .expect("written once free");
    assert_eq!(count(other.load("7:7").await.expect("load")), 1);
    common::remove_sqlite_file(&path);
}

/// Whether `apply` is answered at its first poll: a patch that commits on its own is; one
/// written into a group waits for the others ready to run.
async fn answered_at_once<F>(apply: &mut F) -> bool
where
    F: std::future::Future<Output = Result<(), typed_session::StoreError>> + Unpin,
{
    tokio::select! {
        biased;
        saved = apply => {
            saved.expect("saved");
            true
        }
        () = std::future::ready(()) => false,
    }
}

/// Adaptive group commit: one update at a time, a group finds nobody to share it, so after a
/// few lonely groups patches commit on their own; every 32nd opens a group again, and a group
/// that two patches share brings grouping back.
#[tokio::test]
async fn patches_that_come_one_at_a_time_commit_on_their_own_and_groups_return_with_company() {
    let (grouped, _other, path) = database("adaptive").await;
    // The n-th write of `count` expects the n before it (a conditional patch, as the
    // middleware writes).
    let patch = |n: u64| {
        Patch::new()
            .set_field("count", n.to_string())
            .expect_version("count", n)
    };
    let mut alone = Vec::new();
    for n in 0..40 {
        let written = patch(n);
        let mut apply = grouped.apply("1:1", &written);
        let at_once = answered_at_once(&mut apply).await;
        if !at_once {
            apply.await.expect("saved");
        }
        alone.push(at_once);
    }
    assert_eq!(&alone[..4], &[false; 4], "the first patches open groups");
    assert!(
        alone[4..36].iter().all(|&a| a),
        "then they commit on their own"
    );
    assert!(!alone[36], "the 33rd after the switch tries a group again");
    // Two patches in flight together: once a group is tried again, the second joins it, and
    // grouping is back.
    let mut version = 40;
    let mut shared = false;
    for _ in 0..=32 {
        let (mine, other_key) = (patch(version), format!("{version}:{version}"));
        let theirs = Patch::new()
            .set_field("count", "1")
            .expect_version("count", 0);
        let (mut one, mut two) = (
            grouped.apply("1:1", &mine),
            grouped.apply(&other_key, &theirs),
        );
        let first = answered_at_once(&mut one).await;
        let second = answered_at_once(&mut two).await;
        version += 1;
        if !first {
            assert!(!second, "the second patch joins the open group");
            let (one, two) = tokio::join!(one, two);
            one.and(two).expect("both saved");
            shared = true;
            break;
        }
        if !second {
            two.await.expect("saved");
        }
    }
    assert!(shared, "a group was tried again within 33 patches");
    let last = patch(version);
    let mut next = grouped.apply("1:1", &last);
    assert!(
        !answered_at_once(&mut next).await,
        "after company, a group again"
    );
    next.await.expect("saved");
    assert_eq!(
        count(grouped.load("1:1").await.expect("load")),
        version,
        "every patch committed"
    );
    common::remove_sqlite_file(&path);
}

/// A record's revision is counted from what the connection reads and writes
/// (ARCHITECTURE.md, "Decoded between updates"): inside an open group, a load of a key the
/// group did not write reads what is committed and counts; a key the group wrote has no
/// revision until the group commits.
#[tokio::test]
async fn inside_an_open_group_a_key_it_did_not_write_is_counted_and_one_it_wrote_waits_for_the_commit()
 {
    use typed_session::store::Revision;

    let (grouped, _other, path) = database("revisions").await;
    let first = |count: &str| {
        Patch::new()
            .set_field("count", count)
            .expect_version("count", 0)
    };
    grouped.apply("b", &first("1")).await.expect("b committed");
    assert!(grouped.load("a").await.expect("load a").is_none());
    assert_eq!(grouped.revision("a"), Revision::Absent);

    let patch = first("1");
    let mut apply = grouped.apply("a", &patch);
    assert_pending(&mut apply).await;
    assert_eq!(
        grouped.revision("a"),
        Revision::Unknown,
        "written in the group, not committed"
    );
    // `b` was never read by this connection: its load, inside the group, counts it.
    assert_eq!(grouped.revision("b"), Revision::Unknown);
    assert_eq!(count(grouped.load("b").await.expect("load b")), 1);
    assert!(
        matches!(grouped.revision("b"), Revision::At { .. }),
        "read inside the group: {:?}",
        grouped.revision("b")
    );

    apply.await.expect("committed");
    let created = grouped.revision("a");
    assert!(created.follows(Revision::Absent), "{created:?}");
    common::remove_sqlite_file(&path);
}
