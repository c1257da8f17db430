//! Captures what the crate logs through `tracing` while a test runs, so a test can assert
//! which message an outcome produced (a minimal subscriber: every event as one line, and every
//! span as one line `span <name> <fields>` that the fields recorded later are appended to).
//!
//! One subscriber is installed for the whole process, the first time a test captures, and it
//! hands each event to the capture of the thread that emitted it (none: dropped). A scoped
//! subscriber per test (`tracing::subscriber::set_default`) is not enough once many tests share
//! one binary: `tracing` caches per call site whether anyone listens, and a test that drops its
//! subscriber while another thread's test registers a call site can leave that site switched
//! off for a capture that starts later. The process-wide subscriber always listens, and asks
//! the thread each time.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// The lines logged on this thread while the guard from [`Logs::capture`] lives.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

thread_local! {
    /// This thread's capture, and its number (which span ids carry, so a span of an earlier
    /// capture on this thread never writes into a later one).
    static CAPTURE: RefCell<Option<(u32, Logs)>> = const { RefCell::new(None) };
}

/// Ends this thread's capture when dropped.
pub struct Capturing(());

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

impl Logs {
    /// Starts capturing on this thread (use a current-thread runtime).
    pub fn capture() -> (Self, Capturing) {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        static NEXT: AtomicU32 = AtomicU32::new(1);
        INSTALLED.call_once(|| {
            // Fails only if another subscriber is already global, which nothing here sets.
            let _ = tracing::subscriber::set_global_default(PerThread);
        });
        let logs = Logs::default();
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        CAPTURE.with(|capture| *capture.borrow_mut() = Some((number, logs.clone())));
        (logs, Capturing(()))
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().clone()
    }

    /// Whether a line contains `text`.
    pub fn contain(&self, text: &str) -> bool {
        self.0.lock().iter().any(|line| line.contains(text))
    }
}

/// This thread's capture, if any.
fn current() -> Option<(u32, Logs)> {
    CAPTURE.with(|capture| capture.borrow().clone())
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

/// The process-wide subscriber: each call goes to the calling thread's capture.
struct PerThread;

impl Subscriber for PerThread {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked again at every event: whether this thread captures changes from test to test.
        Interest::sometimes()
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        CAPTURE.with(|capture| capture.borrow().is_some())
    }
    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let Some((number, logs)) = current() else {
            // Not enabled without a capture; an id that names no line.
            return Id::from_u64(u64::MAX);
        };
        let mut line = Line(format!("span {}", attributes.metadata().name()));
        attributes.record(&mut line);
        let mut lines = logs.0.lock();
        lines.push(line.0);
        // The capture's number, then the line's number plus one (ids are never 0).
        Id::from_u64(u64::from(number) << 32 | lines.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let (number, index) = (span.into_u64() >> 32, span.into_u64() & u64::from(u32::MAX));
        let Some((capture, logs)) = current() else {
            return;
        };
        if u64::from(capture) != number {
            return;
        }
        let mut line = Line(String::new());
        values.record(&mut line);
        if let Some(text) = logs.0.lock().get_mut(index as usize - 1) {
            text.push_str(&line.0);
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if let Some((_, logs)) = current() {
            let mut line = Line(event.metadata().level().to_string());
            event.record(&mut line);
            logs.0.lock().push(line.0);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
