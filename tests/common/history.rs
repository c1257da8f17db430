//! Histories of updates and a checker of exactly-once over them (ARCHITECTURE.md, "Exactly
//! once").
//!
//! A test records every delivery of an update as one [`Event`]: which process ran it, the
//! update's id and delivery number, when it was invoked and when it ended, how it ended as the
//! update was told, and for counter sessions the count it read and the count it made. The
//! checker then judges the history, not a total that happens to match:
//!
//! * the final stored count is the number of update ids that ended saved at least once (a
//!   recognised redelivery is a saved delivery of an id already counted);
//! * no two saved deliveries made the same count (no lost update), and the saved counts are
//!   exactly `1..=final` (an increment nobody was told is saved is visible: a failed update
//!   left its write behind);
//! * after a round in which every update was delivered once, the stored count lies between
//!   the saved updates and the saved plus those whose outcome the store could not tell (a
//!   timeout: the write may have landed);
//! * real time: a saved update that began after another saved update ended made a greater
//!   count (its effect was visible); within one process, no delivery that began after a saved
//!   one ended read less than that one made (reads never go backwards past a saved value).
//!
//! Events are written one per line (`to_line` / `from_line`) so that processes of the replicas
//! suite can append theirs to a file, and the test checks the merged history.
//!
//! Included by path from `replicas/tests`, so it uses nothing but `std`.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;

/// How a delivery ended, as the update was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Saved: its write is in the store.
    Saved,
    /// Recognised as a delivery of an update saved before: nothing applied again.
    Recognised,
    /// Told to run again, and its write is certainly not stored (a conflict, a stale write, a
    /// store error the store answered).
    Retry,
    /// Told to run again after a store call whose outcome is unknown (a deadline): the write
    /// may be stored, and a redelivery must then be recognised.
    Indeterminate,
}

impl Outcome {
    fn is_saved(self) -> bool {
        matches!(self, Outcome::Saved | Outcome::Recognised)
    }

    fn code(self) -> &'static str {
        match self {
            Outcome::Saved => "saved",
            Outcome::Recognised => "recognised",
            Outcome::Retry => "retry",
            Outcome::Indeterminate => "indeterminate",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "saved" => Outcome::Saved,
            "recognised" => Outcome::Recognised,
            "retry" => Outcome::Retry,
            "indeterminate" => Outcome::Indeterminate,
            _ => return None,
        })
    }
}

/// One delivery of one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub process: u32,
    pub key: String,
    pub update: i64,
    /// 1 for the first delivery.
    pub delivery: u32,
    /// When the delivery began and ended, in microseconds on a clock all processes share.
    pub invoked: u64,
    pub ended: u64,
    pub outcome: Outcome,
    /// The count it read before adding one (`None`: it did not get to it).
    pub read: Option<u64>,
    /// The count it made (`None`: it made none, or it was a recognised redelivery).
    pub wrote: Option<u64>,
}

impl Event {
    /// A delivery of a counter update that ended `outcome` after it made the count `wrote`
    /// (having read one less), or made none.
    pub fn counted(
        (process, key): (u32, String),
        (update, delivery): (i64, u32),
        (invoked, ended): (u64, u64),
        outcome: Outcome,
        wrote: Option<u64>,
    ) -> Self {
        Event {
            process,
            key,
            update,
            delivery,
            invoked,
            ended,
            outcome,
            read: wrote.map(|count| count.saturating_sub(1)),
            wrote,
        }
    }

    /// The event as one tab-separated line.
    pub fn to_line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.process,
            self.key,
            self.update,
            self.delivery,
            self.invoked,
            self.ended,
            self.outcome.code(),
            opt(self.read),
            opt(self.wrote)
        )
    }

    /// An event written by [`to_line`](Self::to_line).
    pub fn from_line(line: &str) -> Option<Self> {
        let parts: Vec<&str> = line.split('\t').collect();
        let [
            process,
            key,
            update,
            delivery,
            invoked,
            ended,
            outcome,
            read,
            wrote,
        ] = parts[..]
        else {
            return None;
        };
        let opt = |v: &str| {
            if v == "-" {
                Some(None)
            } else {
                v.parse().ok().map(Some)
            }
        };
        Some(Event {
            process: process.parse().ok()?,
            key: key.to_owned(),
            update: update.parse().ok()?,
            delivery: delivery.parse().ok()?,
            invoked: invoked.parse().ok()?,
            ended: ended.parse().ok()?,
            outcome: Outcome::from_code(outcome)?,
            read: opt(read)?,
            wrote: opt(wrote)?,
        })
    }
}

/// A recorder of events, shared by the updates of a test.
pub struct History {
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    events: Mutex<Vec<Event>>,
}

impl History {
    /// A history whose times are read from `clock`, in microseconds: tokio's clock in tests
    /// with paused time, the wall clock where several processes write one history.
    pub fn new(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        History {
            clock: Box::new(clock),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Microseconds since the Unix epoch: one clock for every process on the machine.
    pub fn wall_clock() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// The time now, on the history's clock.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn record(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A rule the history breaks, with the events that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

/// An event in a few words, for reports.
fn brief(e: &Event) -> String {
    format!(
        "update {} delivery {} on process {} ({}..{} us): {:?} made {:?}",
        e.update, e.delivery, e.process, e.invoked, e.ended, e.outcome, e.wrote
    )
}

fn briefs(events: &[&Event]) -> String {
    let shown: Vec<String> = events.iter().take(4).map(|e| brief(e)).collect();
    let more = events.len().saturating_sub(4);
    if more > 0 {
        format!("[{}, and {more} more]", shown.join("; "))
    } else {
        format!("[{}]", shown.join("; "))
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// Checks a counter history of one key whose store now holds `stored`. `rounds` are the
/// stored counts read after each round of deliveries, with the events of that round (the
/// deliveries whose number is the round's).
pub fn check_counter(events: &[Event], stored: u64) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut saved_ids = BTreeSet::new();
    for event in events.iter().filter(|e| e.outcome.is_saved()) {
        saved_ids.insert(event.update);
    }
    if stored != saved_ids.len() as u64 {
        violations.push(Violation {
            rule: "exactly once",
            detail: format!(
                "the store holds {stored}, but {} updates were told saved",
                saved_ids.len()
            ),
        });
    }

    // Saved counts: each made by one saved delivery, and together 1..=stored.
    let mut makers: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for event in events.iter().filter(|e| e.outcome == Outcome::Saved) {
        if let Some(wrote) = event.wrote {
            makers.entry(wrote).or_default().push(event);
        }
    }
    for (count, by) in &makers {
        if by.len() > 1 {
            violations.push(Violation {
                rule: "lost update",
                detail: format!(
                    "count {count} was made by {} saved deliveries: {by:?}",
                    by.len()
                ),
            });
        }
    }
    let recognised = events
        .iter()
        .filter(|e| e.outcome == Outcome::Recognised)
        .map(|e| e.update)
        .filter(|id| {
            // Recognised ids whose saved delivery made no count of its own in this history
            // (it ended told "indeterminate", then was recognised): their count has no maker.
            !events
                .iter()
                .any(|e| e.update == *id && e.outcome == Outcome::Saved)
        })
        .collect::<BTreeSet<_>>()
        .len() as u64;
    let unowned: Vec<u64> = (1..=stored).filter(|c| !makers.contains_key(c)).collect();
    if unowned.len() as u64 > recognised {
        let failed_makers: Vec<&Event> = events
            .iter()
            .filter(|e| !e.outcome.is_saved() && e.wrote.is_some_and(|w| unowned.contains(&w)))
            .collect();
        violations.push(Violation {
            rule: "a failed update is visible",
            detail: format!(
                "stored counts {unowned:?} have no saved maker ({recognised} recognised \
                 redeliveries may own some); deliveries told failed made them: {}",
                briefs(&failed_makers)
            ),
        });
    }
    if let Some((&highest, _)) = makers.iter().next_back()
        && highest > stored
    {
        violations.push(Violation {
            rule: "a saved update is missing",
            detail: format!("a delivery told saved made {highest}, the store holds {stored}"),
        });
    }

    // Real time: a saved update that began after another saved update ended saw its effect.
    let mut saved: Vec<&Event> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Saved && e.wrote.is_some())
        .collect();
    saved.sort_by_key(|e| e.ended);
    for later in &saved {
        // The greatest count made by a saved update that ended before `later` began.
        let before = saved
            .iter()
            .filter(|e| e.ended < later.invoked)
            .filter_map(|e| e.wrote)
            .max();
        if let (Some(before), Some(made)) = (before, later.wrote)
            && made <= before
        {
            violations.push(Violation {
                rule: "real time",
                detail: format!("{later:?} made {made}, but {before} was saved before it began"),
            });
        }
    }

    // Within a process, reads never go back past a saved count.
    let processes: BTreeSet<u32> = events.iter().map(|e| e.process).collect();
    for process in processes {
        let mine: Vec<&Event> = events.iter().filter(|e| e.process == process).collect();
        for reader in &mine {
            let Some(read) = reader.read else { continue };
            let floor = mine
                .iter()
                .filter(|e| e.outcome == Outcome::Saved && e.ended < reader.invoked)
                .filter_map(|e| e.wrote)
                .max();
            if let Some(floor) = floor
                && read < floor
            {
                violations.push(Violation {
                    rule: "read went backwards",
                    detail: format!("{} read {read} after {floor} was saved", brief(reader)),
                });
            }
        }
    }
    violations
}

/// Checks a history of updates that each add `per_update` to one count (in several writes)
/// whose store now holds `stored`: it holds exactly `per_update` for each update told saved.
pub fn check_total(events: &[Event], stored: u64, per_update: u64) -> Vec<Violation> {
    let saved: BTreeSet<i64> = events
        .iter()
        .filter(|e| e.outcome.is_saved())
        .map(|e| e.update)
        .collect();
    let expected = per_update * saved.len() as u64;
    if stored == expected {
        return Vec::new();
    }
    vec![Violation {
        rule: "exactly once",
        detail: format!(
            "the store holds {stored}, but {} updates of {per_update} each were told saved ({expected})",
            saved.len()
        ),
    }]
}

/// Checks the stored count after a round in which each update of `round` was delivered once:
/// it holds every update told saved, and none told failed, except those whose outcome the
/// store could not tell.
pub fn check_round(round: &[Event], stored: u64) -> Vec<Violation> {
    let saved = round.iter().filter(|e| e.outcome.is_saved()).count() as u64;
    let unknown = round
        .iter()
        .filter(|e| e.outcome == Outcome::Indeterminate)
        .count() as u64;
    if stored < saved || stored > saved + unknown {
        vec![Violation {
            rule: "acknowledged = stored",
            detail: format!(
                "after the round the store holds {stored}: {saved} deliveries were told saved, \
                 {unknown} could not be told"
            ),
        }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    // The checker's own cases live in tests/exactly_once.rs (`the_checker_*`), where this
    // module is compiled with a test harness.
}
