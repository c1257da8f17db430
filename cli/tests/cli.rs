//! The `typed-session` binary against real stores: list, count, show and erase-user, human and
//! `--json`, and no password in any message.
//!
//! Reads `POSTGRES_URL`, `MYSQL_URL`, `REDIS_URL`, `REDIS_CLUSTER_URLS` and `MONGODB_URL`;
//! without one, its test prints `SKIPPED cli::<store>` and passes, unless
//! `TYPED_SESSION_REQUIRE_SERVERS=1` (set by `.ci/run`), which fails it.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use typed_session::store::Patch;
use typed_session::{MongoStore, MySqlStore, PostgresStore, RedisStore, SqliteStore, Store};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_typed-session"))
        .args(args)
        .env_remove("TYPED_SESSION_URL")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

fn server_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("TYPED_SESSION_REQUIRE_SERVERS").as_deref() == Ok("1") => {
            panic!("{var} is not set and TYPED_SESSION_REQUIRE_SERVERS=1")
        }
        _ => {
            eprintln!("SKIPPED cli::{test}: {var} is not set");
            None
        }
    }
}

/// A namespace no other test or run uses.
fn namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "Cli{}x{nanos}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Seeds sessions of users 42 and 420 through the library, then runs every command through
/// the binary with `connection` (the URL and store options) and checks what it prints and
/// what the store holds after.
async fn exercise(store: &dyn Store, connection: &[&str]) {
    let ns = namespace();
    let keys = [
        format!("{ns}:42:42"),
        format!("{ns}:42:-100"),
        format!("{ns}:420:420"),
        format!("{ns}:420:-100"),
    ];
    for (i, key) in keys.iter().enumerate() {
        let patch = Patch::new()
            .set_field("name", "\"Ada\"")
            .set_field("visits", (i + 1).to_string())
            .written_by("visits", 1_000 + i as i64);
        store.apply(key, &patch).await.expect("seed");
    }
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = connection.to_vec();
        all.extend_from_slice(args);
        cli(&all)
    };
    let prefix = format!("{ns}:");

    let listed = stdout(&run(&["list", &prefix]));
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let mut want: Vec<&str> = keys.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(listed, want);

    assert_eq!(stdout(&run(&["count", &prefix])).trim(), "4");
    assert_eq!(
        stdout(&run(&["--json", "count", &prefix])).trim(),
        "{\"count\":4}"
    );

    // One page at a time, the cursor handed back.
    let (mut paged, mut cursor) = (Vec::new(), None::<String>);
    for _ in 0..10 {
        let mut args = vec!["--json", "list", &prefix, "--limit", "3"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let out = stdout(&run(&args));
        let mut next = None;
        for line in out.lines() {
            let doc: serde_json::Value = serde_json::from_str(line).expect("JSON lines");
            if let Some(key) = doc.get("key") {
                paged.push(key.as_str().expect("a string").to_owned());
            } else {
                next = doc["next"].as_str().map(str::to_owned);
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    paged.sort();
    paged.dedup();
    assert_eq!(paged, want, "the pages cover every key");

    let key = &keys[1];
    let shown = stdout(&run(&["show", key]));
    assert!(shown.starts_with(&format!("{key}\n")), "{shown}");
    assert!(
        shown.contains("name") && shown.contains("\"Ada\""),
        "{shown}"
    );
    assert!(
        shown.contains("visits") && shown.contains("2  (version 1, update 1001)"),
        "{shown}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["--json", "show", key]))).expect("JSON");
    assert_eq!(
        shown["fields"],
        serde_json::json!({"name": "Ada", "visits": 2})
    );
    assert_eq!(shown["versions"]["visits"], 1);
    assert_eq!(shown["writers"], serde_json::json!({"visits": 1001}));
    assert_eq!(shown["recent_updates"], serde_json::json!([]));
    let missing = run(&["show", &format!("{ns}:nobody")]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no session"));

    let dry = stdout(&run(&["erase-user", "42", "--type", &ns, "--dry-run"]));
    assert!(dry.contains("would erase 2 sessions of user 42"), "{dry}");
    assert!(
        store.load(&keys[0]).await.expect("load").is_some(),
        "a dry run deletes nothing"
    );

    let erased: serde_json::Value = serde_json::from_str(&stdout(&run(&[
        "--json",
        "erase-user",
        "42",
        "--type",
        &ns,
    ])))
    .expect("JSON");
    let mut erased_keys: Vec<String> = erased["erased"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|k| k.as_str().expect("a key").to_owned())
        .collect();
    erased_keys.sort();
    let mut theirs = vec![keys[0].clone(), keys[1].clone()];
    theirs.sort();
    assert_eq!(erased_keys, theirs);
    for key in &keys[..2] {
        assert_eq!(store.load(key).await.expect("load"), None, "{key} erased");
    }
    for key in &keys[2..] {
        assert!(
            store.load(key).await.expect("load").is_some(),
            "{key} kept: user 420 is not 42"
        );
    }
    let again = stdout(&run(&["erase-user", "42", "--type", &ns]));
    assert!(
        again.contains("erased 0 sessions of user 42"),
        "idempotent: {again}"
    );
}

#[tokio::test]
async fn sqlite() {
    let path = std::env::temp_dir().join(format!("typed-session-cli-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await.expect("open");
    store.migrate().await.expect("migrate");
    exercise(&store, &["--url", &url]).await;
    drop(store);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn postgres() {
    let Some(url) = server_url("POSTGRES_URL", "postgres") else {
        return;
    };
    let store = PostgresStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    exercise(&store, &["--url", &url]).await;
}

#[tokio::test]
async fn mysql() {
    let Some(url) = server_url("MYSQL_URL", "mysql") else {
        return;
    };
    let store = MySqlStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    exercise(&store, &["--url", &url]).await;
}

#[tokio::test]
async fn redis() {
    let Some(url) = server_url("REDIS_URL", "redis") else {
        return;
    };
    let store = RedisStore::connect(&url)
        .await
        .expect("connect")
        .with_prefix("cli_test:");
    exercise(&store, &["--url", &url, "--prefix", "cli_test:"]).await;
}

#[tokio::test]
async fn redis_cluster() {
    let Some(urls) = server_url("REDIS_CLUSTER_URLS", "redis_cluster") else {
        return;
    };
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    let store = RedisStore::connect_cluster(&nodes).await.expect("connect");
    let url = format!(
        "redis-cluster://{}",
        nodes
            .iter()
            .map(|n| n.trim_start_matches("redis://"))
            .collect::<Vec<_>>()
            .join(",")
    );
    exercise(&store, &["--url", &url]).await;
}

#[tokio::test]
async fn mongodb() {
    let Some(url) = server_url("MONGODB_URL", "mongodb") else {
        return;
    };
    let store = MongoStore::connect(&url, "typed_session_cli")
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    exercise(&store, &["--url", &url, "--database", "typed_session_cli"]).await;
}

#[test]
fn a_password_in_the_url_never_reaches_the_output() {
    for url in [
        "postgres://bot:hunter2@127.0.0.1:1/test",
        "mysql://bot:hunter2@127.0.0.1:1/test",
        "redis://:hunter2@127.0.0.1:1",
        "ftp://bot:hunter2@example.org",
    ] {
        let output = cli(&["--url", url, "list"]);
        assert_ne!(output.status.code(), Some(0), "{url} cannot work");
        let all = [output.stdout, output.stderr].concat();
        let all = String::from_utf8_lossy(&all);
        assert!(!all.contains("hunter2"), "{url}: {all}");
        assert!(
            all.contains("***"),
            "{url}: the URL is named, redacted: {all}"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let output = cli(&["list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("give --url"));
    let output = cli(&["--url", "sqlite::memory:", "erase-user", "Ada"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("a user id is a number"));
    let output = cli(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("erase-user ID"));
}
