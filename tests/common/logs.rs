//! Captures what the crate logs through `tracing` while a test runs, so a test can assert
//! which message an outcome produced (a minimal subscriber: every event as one line, and every
//! span as one line `span <name> <fields>` that the fields recorded later are appended to).

use std::fmt::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The lines logged on this thread while the guard from [`Logs::capture`] lives.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// Starts capturing on this thread (use a current-thread runtime).
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let guard = tracing::subscriber::set_default(logs.clone());
        (logs, guard)
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().clone()
    }

    /// Whether a line contains `text`.
    pub fn contain(&self, text: &str) -> bool {
        self.0.lock().iter().any(|line| line.contains(text))
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Logs {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let mut line = Line(format!("span {}", attributes.metadata().name()));
        attributes.record(&mut line);
        let mut lines = self.0.lock();
        lines.push(line.0);
        // The span's id is its line's number, plus one (ids are never 0).
        Id::from_u64(lines.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut line = Line(String::new());
        values.record(&mut line);
        if let Some(text) = self.0.lock().get_mut(span.into_u64() as usize - 1) {
            text.push_str(&line.0);
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
