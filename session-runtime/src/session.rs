//! The [`Session`] trait: a session type with its typed handle, what `#[derive(Session)]`
//! generates and what the middleware, the context and the adapters are generic over.

use crate::live::SessionRef;
use crate::schema::Schema;

/// A session type: its stored shape ([`Schema`]) and the typed handle `ctx.session()` returns.
///
/// Implemented by `#[derive(Session)]`; implementing it by hand is possible, but the derive
/// keeps the field indexes, names, codecs and handle methods in step.
pub trait Session: Schema {
    /// The typed handle `ctx.session()` returns (for `struct Visits`, `VisitsHandle<'a>`).
    type Handle<'a>;

    /// Wraps the runtime's side of a handle into the typed handle.
    fn new_handle(inner: SessionRef<'_, Self>) -> Self::Handle<'_>;
}
