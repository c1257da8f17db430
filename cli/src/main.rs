//! `typed-session`: see and manage the sessions a bot stores, from a shell.
//!
//! ```text
//! typed-session --url URL [store options] [--json] COMMAND
//!
//! list [PREFIX] [--limit N] [--cursor C]   keys that start with PREFIX ("Profile:42:")
//! count [PREFIX]                           how many keys start with PREFIX
//! show KEY                                 a session's fields, versions and writers
//! erase-user ID [--type NAME].. [--dry-run]
//!                                          delete every session of user ID
//! ```
//!
//! Store URLs are the stores' own: `sqlite://bot.db`, `postgres://..`, `mysql://..`,
//! `redis://..`, `redis-cluster://host:7000,host:7001`, `mongodb://host/database`. Keys are as
//! stored: the session type's namespace, `:`, then the key (`Profile:42:42`).

use std::process::ExitCode;
use std::sync::Arc;

use typed_session::store::{Cursor, Record};
use typed_session::{MongoStore, MySqlStore, PostgresStore, RedisStore, SqliteStore, Store};

const USAGE: &str = "\
usage: typed-session --url URL [--table NAME] [--prefix P] [--database DB] [--json] COMMAND

commands:
  list [PREFIX] [--limit N] [--cursor C]   list the keys that start with PREFIX (all of them,
                                           or one page of N and the cursor of the next)
  count [PREFIX]                           count the keys that start with PREFIX
  show KEY                                 print a session: fields, versions, writers
  erase-user ID [--type NAME].. [--dry-run]
                                           delete every session of user ID: keys NAME:ID and
                                           NAME:ID:CHAT, in the types named (default: all)

store URLs:
  sqlite://PATH  postgres://..  mysql://..  redis://..  mongodb://HOST/DATABASE
  redis-cluster://HOST:PORT,HOST:PORT,..

options:
  --table NAME     SQL table or MongoDB collection (default typed_sessions)
  --prefix P       Redis key prefix (default typed_session:)
  --database DB    MongoDB database, when the URL names none
  --json           machine-readable output (one JSON document per line)

Keys are as stored: the session type's namespace, ':', then the key, e.g. Profile:42:42.
erase-user deletes in the store only: a bot that is running keeps what its updates hold in
memory, and its writes of erased fields are refused as conflicts; from inside the bot,
typed_session::Erasure also clears its live sessions.";

/// How many keys one listing brings.
const PAGE: usize = 500;

#[derive(Debug, Default)]
struct Options {
    url: String,
    table: Option<String>,
    prefix: Option<String>,
    database: Option<String>,
    json: bool,
    command: Vec<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    types: Vec<String>,
    dry_run: bool,
}

/// A failure, with the exit code it ends the process with.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: format!("{}\n\n{USAGE}", message.into()),
    }
}

fn failed(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: message.to_string(),
    }
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, Failure> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    let mut url = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                return Err(Failure {
                    code: 0,
                    message: USAGE.to_owned(),
                });
            }
            "--url" => url = Some(value("--url")?),
            "--table" => options.table = Some(value("--table")?),
            "--prefix" => options.prefix = Some(value("--prefix")?),
            "--database" => options.database = Some(value("--database")?),
            "--json" => options.json = true,
            "--dry-run" => options.dry_run = true,
            "--type" => options.types.push(value("--type")?),
            "--cursor" => options.cursor = Some(value("--cursor")?),
            "--limit" => {
                let limit = value("--limit")?;
                options.limit = Some(limit.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(
                    || usage(format!("--limit takes a positive number, not {limit:?}")),
                )?);
            }
            flag if flag.starts_with("--") => return Err(usage(format!("unknown option {flag}"))),
            _ => options.command.push(arg),
        }
    }
    options.url = url
        .or_else(|| std::env::var("TYPED_SESSION_URL").ok())
        .ok_or_else(|| usage("no store: give --url URL (or set TYPED_SESSION_URL)"))?;
    Ok(options)
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials
                .split_once(':')
                .map_or(credentials, |(user, _)| user);
            let hidden = if credentials.contains(':') {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

async fn open(options: &Options) -> Result<Arc<dyn Store>, Failure> {
    let url = options.url.as_str();
    let scheme = url.split(':').next().unwrap_or_default();
    // A store's error may quote the URL it was given: show it without the password.
    let cannot = |e: typed_session::StoreError| {
        failed(format!("cannot open {}: {}", redact(url), e).replace(url, &redact(url)))
    };
    let table = options.table.as_deref();
    let store: Arc<dyn Store> = match scheme {
        "sqlite" => {
            let store = SqliteStore::connect(url).await.map_err(cannot)?;
            Arc::new(match table {
                Some(table) => store.with_table(table).map_err(cannot)?,
                None => store,
            })
        }
        "postgres" | "postgresql" => {
            let store = PostgresStore::connect(url).await.map_err(cannot)?;
            Arc::new(match table {
                Some(table) => store.with_table(table).map_err(cannot)?,
                None => store,
            })
        }
        "mysql" | "mariadb" => {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let store = MySqlStore::connect(&url).await.map_err(cannot)?;
            Arc::new(match table {
                Some(table) => store.with_table(table).map_err(cannot)?,
                None => store,
            })
        }
        "redis" | "rediss" => {
            let store = RedisStore::connect(url).await.map_err(cannot)?;
            Arc::new(match &options.prefix {
                Some(prefix) => store.with_prefix(prefix),
                None => store,
            })
        }
        "redis-cluster" => {
            let nodes: Vec<String> = url
                .trim_start_matches("redis-cluster://")
                .split(',')
                .map(|node| format!("redis://{}", node.trim()))
                .collect();
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let store = RedisStore::connect_cluster(&nodes).await.map_err(cannot)?;
            Arc::new(match &options.prefix {
                Some(prefix) => store.with_prefix(prefix),
                None => store,
            })
        }
        "mongodb" | "mongodb+srv" => {
            let from_url = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, path)| path.split('?').next().unwrap_or_default())
                .filter(|database| !database.is_empty());
            let database = options.database.as_deref().or(from_url).ok_or_else(|| {
                usage("MongoDB needs a database: mongodb://HOST/DATABASE or --database DB")
            })?;
            let store = MongoStore::connect(url, database).await.map_err(cannot)?;
            Arc::new(match table {
                Some(collection) => store.with_collection(collection).map_err(cannot)?,
                None => store,
            })
        }
        _ => {
            return Err(usage(format!(
                "{} is not a store URL this tool knows",
                redact(url)
            )));
        }
    };
    Ok(store)
}

/// Calls `each` with every key that starts with `prefix`, a page at a time.
async fn walk(
    store: &dyn Store,
    prefix: &str,
    mut each: impl FnMut(String) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = store
            .keys(prefix, cursor.as_ref(), PAGE)
            .await
            .map_err(failed)?;
        for key in page.keys {
            each(key)?;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

async fn list(store: &dyn Store, options: &Options, prefix: &str) -> Result<(), Failure> {
    let print = |key: &str| {
        if options.json {
            println!("{{\"key\":{}}}", json_string(key));
        } else {
            println!("{key}");
        }
    };
    let Some(limit) = options.limit else {
        // Each key once, even where a scan hands one back twice (Redis).
        let mut seen = std::collections::HashSet::new();
        return walk(store, prefix, |key| {
            if seen.insert(key.clone()) {
                print(&key);
            }
            Ok(())
        })
        .await;
    };
    let cursor = options.cursor.clone().map(Cursor::new);
    let page = store
        .keys(prefix, cursor.as_ref(), limit)
        .await
        .map_err(failed)?;
    for key in &page.keys {
        print(key);
    }
    match (&page.next, options.json) {
        (Some(next), true) => println!("{{\"next\":{}}}", json_string(next.as_str())),
        (Some(next), false) => eprintln!("more: --cursor {next}"),
        (None, true) => println!("{{\"next\":null}}"),
        (None, false) => {}
    }
    Ok(())
}

async fn count(store: &dyn Store, options: &Options, prefix: &str) -> Result<(), Failure> {
    let mut seen = std::collections::HashSet::new();
    walk(store, prefix, |key| {
        seen.insert(key);
        Ok(())
    })
    .await?;
    if options.json {
        println!("{{\"count\":{}}}", seen.len());
    } else {
        println!("{}", seen.len());
    }
    Ok(())
}

async fn show(store: &dyn Store, options: &Options, key: &str) -> Result<(), Failure> {
    let Some(record) = store.load(key).await.map_err(failed)? else {
        return Err(failed(format!("no session {key:?}")));
    };
    if options.json {
        println!("{}", record_json(key, &record));
        return Ok(());
    }
    println!("{key}");
    let mut names: Vec<&String> = record.fields.keys().collect();
    names.sort();
    let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
    for name in names {
        let mut line = format!("  {name:width$}  {}", record.fields[name]);
        line.push_str(&format!("  (version {}", record.version(name)));
        if let Some(update) = record.writers.get(name) {
            line.push_str(&format!(", update {update}"));
        }
        line.push(')');
        println!("{line}");
    }
    Ok(())
}

fn record_json(key: &str, record: &Record) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = record
        .fields
        .iter()
        .map(|(name, text)| {
            // Every store keeps JSON text; anything else is shown as the string it is.
            let value = serde_json::from_str(text).unwrap_or_else(|_| text.as_str().into());
            (name.clone(), value)
        })
        .collect();
    // Names starting with '@' that are no field: the runtime's window of recent update ids.
    let (recent, writers): (Vec<_>, Vec<_>) = record
        .writers
        .iter()
        .partition(|(name, _)| name.starts_with('@') && !record.fields.contains_key(*name));
    let mut recent: Vec<i64> = recent.into_iter().map(|(_, id)| *id).collect();
    recent.sort_unstable();
    let writers: serde_json::Map<String, serde_json::Value> = writers
        .into_iter()
        .map(|(name, id)| (name.clone(), (*id).into()))
        .collect();
    serde_json::json!({
        "key": key,
        "fields": fields,
        "versions": record.versions,
        "writers": writers,
        "recent_updates": recent,
    })
}

/// Whether stored key `key` (`{namespace}:{key}`) is one of user `user`'s: `{ns}:{user}` (per
/// user, or their private chat) or `{ns}:{user}:{chat}` (per user per chat).
fn is_users(key: &str, user: &str) -> bool {
    let Some((_, rest)) = key.split_once(':') else {
        return false;
    };
    rest == user
        || rest
            .strip_prefix(user)
            .is_some_and(|tail| tail.starts_with(':'))
}

async fn erase_user(store: &dyn Store, options: &Options, id: i64) -> Result<(), Failure> {
    let user = id.to_string();
    let prefixes: Vec<String> = if options.types.is_empty() {
        vec![String::new()]
    } else {
        options
            .types
            .iter()
            .map(|name| format!("{name}:"))
            .collect()
    };
    let mut theirs = Vec::new();
    for prefix in &prefixes {
        walk(store, prefix, |key| {
            if is_users(&key, &user) && !theirs.contains(&key) {
                theirs.push(key);
            }
            Ok(())
        })
        .await?;
    }
    theirs.sort();
    if !options.dry_run {
        for key in &theirs {
            store.delete(key).await.map_err(failed)?;
        }
    }
    if options.json {
        let keys: Vec<serde_json::Value> = theirs.iter().map(|k| k.as_str().into()).collect();
        let done = if options.dry_run {
            "would_erase"
        } else {
            "erased"
        };
        println!("{}", serde_json::json!({ "user": id, done: keys }));
    } else {
        let verb = if options.dry_run {
            "would erase"
        } else {
            "erased"
        };
        for key in &theirs {
            println!("{verb} {key}");
        }
        let sessions = if theirs.len() == 1 {
            "session"
        } else {
            "sessions"
        };
        println!("{verb} {} {sessions} of user {user}", theirs.len());
    }
    Ok(())
}

async fn run(options: Options) -> Result<(), Failure> {
    let command: Vec<&str> = options.command.iter().map(String::as_str).collect();
    let store = match command.first() {
        None => return Err(usage("no command")),
        Some(_) => open(&options).await?,
    };
    match command.as_slice() {
        ["list"] => list(&*store, &options, "").await,
        ["list", prefix] => list(&*store, &options, prefix).await,
        ["count"] => count(&*store, &options, "").await,
        ["count", prefix] => count(&*store, &options, prefix).await,
        ["show", key] => show(&*store, &options, key).await,
        ["erase-user", id] => {
            let user = id
                .parse()
                .map_err(|_| usage(format!("a user id is a number, not {id:?}")))?;
            erase_user(&*store, &options, user).await
        }
        _ => Err(usage(format!(
            "cannot read the command {:?}",
            options.command.join(" ")
        ))),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let outcome = match parse(std::env::args().skip(1)) {
        Ok(options) => run(options).await,
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code: 0, message }) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(Failure { code, message }) => {
            eprintln!("typed-session: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_never_shown() {
        assert_eq!(
            redact("postgres://bot:s3cret@db:5432/sessions"),
            "postgres://bot:***@db:5432/sessions"
        );
        assert_eq!(
            redact("redis://:s3cret@cache:6379"),
            "redis://:***@cache:6379"
        );
        assert_eq!(redact("redis://cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(redact("mysql://root@db/test"), "mysql://root@db/test");
        assert_eq!(redact("sqlite://bot.db"), "sqlite://bot.db");
    }

    #[test]
    fn a_users_keys_are_their_own_and_their_chats_not_a_neighbours() {
        assert!(is_users("Profile:42", "42"));
        assert!(is_users("Profile:42:-100", "42"));
        assert!(!is_users("Profile:420:42", "42"));
        assert!(!is_users("Profile:-42", "42"));
        assert!(
            !is_users("Profile:7:42", "42"),
            "someone else in a chat of id 42"
        );
        assert!(!is_users("42", "42"), "no namespace: not a session key");
    }
}
