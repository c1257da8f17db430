//! Which updates run when: the [`Window`] of updates started and not yet confirmed (what
//! offset to send), the per-chat queues of [`Running`], and the [`Backoff`] between retries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinSet;

/// Where an update started by the poller stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Running,
    /// Finished, and its sessions are saved (or it had none to save).
    Saved,
    /// Finished, but a session could not be saved (or the handler panicked and its save runs
    /// on a task of its own).
    Unsaved,
}

/// The updates started and not yet confirmed to Telegram.
#[derive(Default)]
pub(super) struct Window {
    /// By update id; confirmed ones are dropped from the front.
    pub(super) open: BTreeMap<i64, Status>,
    /// The id after the newest update started (or skipped).
    pub(super) fresh_from: i64,
}

impl Window {
    /// The offset to send: the first update not saved yet, or the one after the newest.
    pub(super) fn watermark(&mut self) -> i64 {
        while let Some(first) = self.open.first_entry() {
            if *first.get() != Status::Saved {
                return *first.key();
            }
            first.remove();
        }
        self.fresh_from
    }

    pub(super) fn finish(&mut self, (id, status): (Option<i64>, Status)) {
        match id.and_then(|id| self.open.get_mut(&id)) {
            Some(slot) => *slot = status,
            // A panicked task whose update is unknown: hold everything back until a flush.
            None => {
                for slot in self.open.values_mut() {
                    *slot = Status::Unsaved;
                }
            }
        }
    }

    pub(super) fn has_unsaved(&self) -> bool {
        self.open.values().any(|s| *s == Status::Unsaved)
    }

    /// After a successful flush: every finished update is saved.
    pub(super) fn saved(&mut self) {
        for slot in self.open.values_mut() {
            if *slot == Status::Unsaved {
                *slot = Status::Saved;
            }
        }
    }
}

/// A handled update, ready to run.
pub(super) type Job = Pin<Box<dyn Future<Output = Status> + Send>>;

/// The updates taken and not finished: running, each on a task of its own, or waiting for
/// the update of the same chat before them (one chat's updates run one at a time, in order).
#[derive(Default)]
pub(super) struct Running {
    tasks: JoinSet<Status>,
    /// Update id and chat of each task.
    ids: HashMap<tokio::task::Id, (i64, Option<i64>)>,
    /// Per chat with an update running, the ones waiting behind it.
    waiting: HashMap<i64, VecDeque<(i64, Job)>>,
    queued: usize,
}

impl Running {
    /// Runs update `id` of `chat` now, or after the updates of that chat taken before it.
    pub(super) fn submit(&mut self, id: i64, chat: Option<i64>, job: Job) {
        if let Some(chat) = chat {
            if let Some(queue) = self.waiting.get_mut(&chat) {
                queue.push_back((id, job));
                self.queued += 1;
                return;
            }
            self.waiting.insert(chat, VecDeque::new());
        }
        self.spawn(id, chat, job);
    }

    pub(super) fn spawn(&mut self, id: i64, chat: Option<i64>, job: Job) {
        let handle = self.tasks.spawn(job);
        self.ids.insert(handle.id(), (id, chat));
    }

    /// Running and waiting.
    pub(super) fn len(&self) -> usize {
        self.tasks.len() + self.queued
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next update to finish, with its status, after starting the next one of its chat;
    /// `None` when nothing runs.
    pub(super) async fn join_next(&mut self) -> Option<(Option<i64>, Status)> {
        let joined = self.tasks.join_next_with_id().await?;
        let (task, status) = match joined {
            Ok(done) => done,
            Err(error) => {
                let id = self.ids.get(&error.id()).map(|(id, _)| *id);
                tracing::error!(
                    update_id = id,
                    "the handler panicked; its sessions are persisted on a task of their own"
                );
                (error.id(), Status::Unsaved)
            }
        };
        let (id, chat) = self.ids.remove(&task).unzip();
        if let Some(chat) = chat.flatten() {
            match self.waiting.get_mut(&chat).and_then(VecDeque::pop_front) {
                Some((next, job)) => {
                    self.queued -= 1;
                    self.spawn(next, Some(chat), job);
                }
                None => {
                    self.waiting.remove(&chat);
                }
            }
        }
        Some((id, status))
    }

    /// Waits for every update taken.
    pub(super) async fn drain(&mut self, window: &mut Window) {
        while let Some(joined) = self.join_next().await {
            window.finish(joined);
        }
    }
}

pub(super) struct Backoff {
    first: Duration,
    longest: Duration,
    current: Duration,
}

impl Backoff {
    pub(super) fn new((first, longest): (Duration, Duration)) -> Self {
        Backoff {
            first,
            longest,
            current: first,
        }
    }

    pub(super) fn next(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.longest);
        wait
    }

    pub(super) fn reset(&mut self) {
        self.current = self.first;
    }
}
