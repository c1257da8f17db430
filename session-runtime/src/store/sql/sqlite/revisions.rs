//! What [`SqliteStore`](super::SqliteStore) tells of [`Store::revision`](crate::Store::revision):
//! the records its connection last read or wrote, current while no other connection has
//! committed since.
//!
//! SQLite counts the commits of other connections for each connection (`PRAGMA
//! data_version`: it changes when another connection, of this process or another, commits,
//! and never for the connection's own). So while it stays the same, every change to a record
//! went through this connection, which counts them here; once it moves, nothing here is
//! trusted and every revision is unknown until the record is read again.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::store::Revision;

/// How many records are followed at once. The runtime keeps at most 10,000 sessions decoded
/// between updates; past this many, the whole table is forgotten (every session then loads
/// once more) rather than grow.
const FOLLOWED: usize = 16_384;

/// The records this connection read or wrote, as of one `data_version`.
#[derive(Debug, Default)]
pub(super) struct Revisions {
    /// No other connection can commit: the database is this connection's alone (in memory,
    /// or its locks held: [`Locking::Exclusive`](super::Locking::Exclusive)), and nothing
    /// needs checking.
    pub(super) private: bool,
    /// The store was asked for [`Locking::Exclusive`](super::Locking::Exclusive): its locks
    /// are taken again whenever the connection comes back from the application.
    pub(super) exclusive: bool,
    /// `PRAGMA data_version` when `known` was last checked; `None` before the first check.
    data_version: Option<i64>,
    /// The `life` of the next record seen for the first time: each is one no record had.
    next_life: u64,
    known: HashMap<Box<str>, Known, foldhash::fast::RandomState>,
    /// What the patches written in the open group transaction will make of their records
    /// once it commits; meanwhile their revisions are unknown.
    pending: HashMap<Box<str>, Known, foldhash::fast::RandomState>,
}

/// A record as this connection last left it.
#[derive(Debug, Clone, Copy)]
enum Known {
    /// No row, or none live.
    Absent,
    At {
        life: u64,
        writes: u64,
        /// Milliseconds since the Unix epoch; `None` lives until deleted.
        expires_at: Option<i64>,
    },
}

/// What an apply that committed left of its row's expiry.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expiry {
    /// Set by the patch (a ttl).
    Set(i64),
    /// Left as it was on a live row; none on a row the patch created.
    Kept,
}

impl Revisions {
    /// Whether what is known is still current: no other connection committed since the last
    /// check. When one did, everything known is forgotten. Run it before a read whose outcome
    /// is to be recorded: a commit that lands between the check and the read is seen by the
    /// next check.
    pub(super) fn current(&mut self, connection: &Connection) -> bool {
        if self.private {
            return true;
        }
        let version = connection
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)))
            .ok();
        if version.is_none() || version != self.data_version {
            // What is pending was built on what was known: it goes too.
            self.known.clear();
            self.pending.clear();
            self.data_version = version;
        }
        version.is_some()
    }

    /// Whether `key`'s record is known, if nothing changed since the last check.
    pub(super) fn knows(&self, key: &str) -> bool {
        self.known.contains_key(key)
    }

    /// The revision of `key`'s record, if it is known (after [`current`](Self::current)).
    pub(super) fn revision(&self, key: &str, now_ms: impl FnOnce() -> i64) -> Revision {
        match self.known.get(key) {
            None => Revision::Unknown,
            Some(Known::Absent) => Revision::Absent,
            Some(Known::At {
                life,
                writes,
                expires_at,
            }) => match expires_at {
                Some(at) if *at <= now_ms() => Revision::Absent,
                _ => Revision::At {
                    life: *life,
                    writes: *writes,
                },
            },
        }
    }

    /// A read found `key`'s row (`Some(expires_at)`) or no live one (`None`), after
    /// [`current`](Self::current). A record seen for the first time starts a new life: the
    /// revision need not count its writes from its creation, only tell its states apart.
    pub(super) fn read(&mut self, key: &str, row: Option<Option<i64>>) {
        if self.known.contains_key(key) {
            return;
        }
        let known = match row {
            None => Known::Absent,
            Some(expires_at) => Known::At {
                life: self.new_life(),
                writes: 0,
                expires_at,
            },
        };
        self.insert(key, known);
    }

    /// An apply to `key` succeeded at `now_ms`: committed, or written in the open group
    /// transaction (`pending`), to count once it commits ([`ended`](Self::ended)).
    pub(super) fn wrote(&mut self, key: &str, now_ms: i64, expiry: Expiry, pending: bool) {
        let before = self.pending.get(key).or_else(|| self.known.get(key));
        let live = match before {
            Some(Known::At {
                life,
                writes,
                expires_at,
            }) if expires_at.is_none_or(|at| at > now_ms) => Some((*life, *writes, *expires_at)),
            Some(_) => None,
            None if matches!(expiry, Expiry::Set(_)) => None,
            // Neither how the row stood nor so its expiry is known.
            None => return self.forget(key),
        };
        let after = match live {
            Some((life, writes, expires_at)) => Known::At {
                life,
                writes: writes.saturating_add(1),
                expires_at: match expiry {
                    Expiry::Set(at) => Some(at),
                    Expiry::Kept => expires_at,
                },
            },
            None => Known::At {
                life: self.new_life(),
                writes: 0,
                expires_at: match expiry {
                    Expiry::Set(at) => Some(at),
                    Expiry::Kept => None,
                },
            },
        };
        if pending {
            self.known.remove(key);
            self.pending.insert(Box::from(key), after);
        } else {
            self.insert(key, after);
        }
    }

    /// The open group transaction ended: what its patches made is known if it `committed`.
    pub(super) fn ended(&mut self, committed: bool) {
        let pending = std::mem::take(&mut self.pending);
        if committed {
            for (key, after) in pending {
                self.insert(&key, after);
            }
        }
    }

    /// `key`'s row was deleted.
    pub(super) fn deleted(&mut self, key: &str) {
        self.insert(key, Known::Absent);
    }

    /// What became of `key`'s record is not known (a failed call, a write not yet committed).
    pub(super) fn forget(&mut self, key: &str) {
        self.known.remove(key);
        self.pending.remove(key);
    }

    /// Nothing is known any more (the connection was handed to the application).
    pub(super) fn clear(&mut self) {
        self.known.clear();
        self.pending.clear();
        self.data_version = None;
    }

    fn new_life(&mut self) -> u64 {
        self.next_life = self.next_life.wrapping_add(1);
        self.next_life
    }

    fn insert(&mut self, key: &str, known: Known) {
        if let Some(slot) = self.known.get_mut(key) {
            *slot = known;
            return;
        }
        if self.known.len() >= FOLLOWED {
            self.known.clear();
        }
        self.known.insert(Box::from(key), known);
    }
}
