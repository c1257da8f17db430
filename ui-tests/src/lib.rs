//! Compile-pass and compile-fail cases of `#[derive(Session)]`, run by `tests/ui.rs` with
//! trybuild. This crate depends on `typed-session` without store features, so the cases
//! compile only light dependencies.
