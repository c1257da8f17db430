//! Heap allocations per update (`--bench allocs`): a counting global allocator.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use typed_session::{BoxError, MemoryStore};

use crate::chains::{baseline_chain, count_chain};
use crate::meter::r3;
use crate::options::Options;
use crate::workload::{feed, user_sequence};

pub(crate) struct CountingAlloc;

pub(crate) static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
pub(crate) static GLOBAL: CountingAlloc = CountingAlloc;

/// Heap allocations per update, session and baseline, on the `seq` workload.
pub(crate) async fn allocs(o: &Options) -> Result<serde_json::Value, BoxError> {
    let seq = user_sequence(o.updates, o.users);
    let mut per_update = serde_json::Map::new();
    for variant in ["baseline", "session"] {
        let chain = Arc::new(if variant == "session" {
            count_chain(Arc::new(MemoryStore::new()))
        } else {
            baseline_chain()
        });
        feed(&chain, &seq, "seq", 1).await?; // warm: tables grown, users stored
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        feed(&chain, &seq, "seq", 1).await?;
        let n = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / o.updates as f64;
        per_update.insert(variant.into(), json!(r3(n)));
    }
    Ok(
        json!({ "bench": "allocs", "fw": "typed-session", "updates": o.updates, "allocations_per_update": per_update }),
    )
}
