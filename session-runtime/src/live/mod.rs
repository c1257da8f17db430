//! Live sessions: the values that the updates of one key share while any of them runs
//! (ARCHITECTURE.md, "Sharing"), from the store below to the typed handles above.
//!
//! * [`entry`]: one live value, its per-field bookkeeping and its codec both ways;
//! * [`registry`]: the entries of one middleware by key, with their hold counts;
//! * [`sessions`]: what one middleware's updates share (registry, store, policies, counters);
//! * [`expiry`]: the term of stored sessions, and the coalesced renewals of reads;
//! * [`access`]: one update's hold on an entry, and the [`SessionRef`] typed handles wrap;
//! * [`lease`]: exclusive mode across processes, a lease on a key kept in its record;
//! * [`migrate`]: versioned migrations of stored records, run as they are loaded;
//! * [`window`]: the ids of the latest updates a session saved, to recognise redeliveries.

pub(crate) mod access;
pub(crate) mod entry;
pub(crate) mod expiry;
pub(crate) mod lease;
pub(crate) mod migrate;
pub(crate) mod registry;
pub(crate) mod sessions;
pub(crate) mod window;

pub use access::SessionRef;
