//! Live sessions: the values that the updates of one key share while any of them runs
//! (ARCHITECTURE.md, "Sharing"), from the store below to the typed handles above.
//!
//! * [`state`]: the per-field bookkeeping of one live value, and the patch built from it;
//! * [`entry`]: one live value: loading and decoding it, saving it, its lease and erasure;
//! * [`registry`]: the entries of one middleware by key, with their hold counts;
//! * [`sessions`]: what one middleware's updates share (registry, store, policies, counters);
//! * [`expiry`]: the term of stored sessions, and the coalesced renewals of reads;
//! * [`hold`]: one update's slot, and its hold on an entry (turn, lease, versions seen, undo);
//! * [`handle`]: [`SessionRef`], which typed handles wrap;
//! * [`lease`]: exclusive mode across processes, a lease on a key kept in its record;
//! * [`migrate`]: versioned migrations of stored records, run as they are loaded;
//! * [`window`]: the ids of the latest updates a session saved, to recognise redeliveries.

pub(crate) mod entry;
pub(crate) mod expiry;
pub(crate) mod handle;
pub(crate) mod hold;
pub(crate) mod lease;
pub(crate) mod migrate;
pub(crate) mod registry;
pub(crate) mod sessions;
pub(crate) mod state;
pub(crate) mod window;

pub use handle::SessionRef;
