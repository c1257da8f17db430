//! Which updates run when: the [`Window`] of updates started and not yet confirmed (what
//! offset to send), the per-chat queues of [`Running`], and the [`Backoff`] between retries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::task::JoinSet;

/// Where an update started by the poller stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Running,
    /// Finished, and its sessions are saved (or it had none to save).
    Saved,
    /// Finished, but a session could not be saved and keeps the writes for a flush (or the
    /// handler panicked and its save runs on a task of its own).
    Unsaved,
    /// Finished, but its writes were taken back (its save failed, or another writer had
    /// changed the fields): it has to run again.
    Retry,
}

/// The updates started and not yet confirmed to Telegram.
#[derive(Default)]
pub(super) struct Window {
    /// By update id; confirmed ones are dropped from the front.
    pub(super) open: BTreeMap<i64, Status>,
    /// The id after the newest update started (or skipped).
    pub(super) fresh_from: i64,
    /// The text of each update in `open`, to run again one that has to.
    pub(super) raw: HashMap<i64, Box<RawValue>>,
}

impl Window {
    /// The offset to send: the first update not saved yet, or the one after the newest.
    pub(super) fn watermark(&mut self) -> i64 {
        while let Some(first) = self.open.first_entry() {
            if *first.get() != Status::Saved {
                return *first.key();
            }
            let (id, _) = first.remove_entry();
            self.raw.remove(&id);
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
        self.open
            .values()
            .any(|s| matches!(s, Status::Unsaved | Status::Retry))
    }

    /// The updates finished without their sessions saved, oldest first.
    pub(super) fn unsaved_ids(&self) -> Vec<i64> {
        self.open
            .iter()
            .filter(|(_, status)| matches!(status, Status::Unsaved | Status::Retry))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The updates that have to run again, oldest first, with their text.
    pub(super) fn to_retry(&self) -> Vec<(i64, Box<RawValue>)> {
        self.open
            .iter()
            .filter(|(_, status)| **status == Status::Retry)
            .filter_map(|(id, _)| Some((*id, self.raw.get(id)?.clone())))
            .collect()
    }

    /// After a successful flush: every finished update whose writes were kept is saved (those
    /// to run again are not).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(statuses: &[(i64, Status)], fresh_from: i64) -> Window {
        Window {
            open: statuses.iter().copied().collect(),
            fresh_from,
            raw: HashMap::new(),
        }
    }

    #[test]
    fn the_watermark_is_the_first_update_not_saved() {
        let mut w = window(
            &[(5, Status::Saved), (6, Status::Running), (7, Status::Saved)],
            8,
        );
        assert_eq!(w.watermark(), 6);
        assert_eq!(w.open.len(), 2, "saved ones before it are dropped");
        w.finish((Some(6), Status::Saved));
        assert_eq!(w.watermark(), 8, "all saved: the one after the newest");
        assert!(w.open.is_empty());
    }

    #[test]
    fn an_unsaved_update_holds_the_watermark_until_a_flush_saves_it() {
        let mut w = window(&[(1, Status::Running), (2, Status::Running)], 3);
        w.finish((Some(2), Status::Saved));
        w.finish((Some(1), Status::Unsaved));
        assert!(w.has_unsaved());
        assert_eq!(w.watermark(), 1);
        w.saved();
        assert!(!w.has_unsaved());
        assert_eq!(w.watermark(), 3);
    }

    #[test]
    fn a_panicked_task_of_unknown_update_holds_everything_back() {
        let mut w = window(&[(1, Status::Saved), (2, Status::Running)], 3);
        w.finish((None, Status::Unsaved));
        assert_eq!(w.watermark(), 1);
        assert!(w.has_unsaved());
    }

    #[test]
    fn backoff_doubles_up_to_the_longest_and_resets() {
        let mut b = Backoff::new((Duration::from_millis(100), Duration::from_millis(350)));
        let waits: Vec<_> = (0..4).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn one_chats_updates_run_one_at_a_time_in_order() {
        let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let job = |id: i64| -> Job {
            let order = std::sync::Arc::clone(&order);
            Box::pin(async move {
                order.lock().push(id);
                Status::Saved
            })
        };
        let mut running = Running::default();
        running.submit(1, Some(7), job(1));
        running.submit(2, Some(7), job(2));
        running.submit(3, Some(8), job(3));
        assert_eq!(running.len(), 3);
        assert_eq!(running.tasks.len(), 2, "chat 7's second update waits");
        let mut finished = Vec::new();
        while let Some((id, status)) = running.join_next().await {
            assert_eq!(status, Status::Saved);
            finished.extend(id);
        }
        assert!(running.is_empty());
        let seven: Vec<_> = order.lock().iter().copied().filter(|id| *id != 3).collect();
        assert_eq!(seven, [1, 2], "chat 7 in Telegram's order");
        finished.sort_unstable();
        assert_eq!(finished, [1, 2, 3]);
    }
}
