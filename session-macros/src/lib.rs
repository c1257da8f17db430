//! `#[derive(Session)]` for [typed-session](https://docs.rs/typed-session). Use it through the
//! `typed-session` crate, whose documentation describes the attributes.
//!
//! The derive runs in four steps, each in its own module: `parse` reads the attributes into
//! plain data, collecting every error; `model` builds a typed description of the session
//! that keeps spans; `validate` checks what needs the whole struct; `expand` writes one
//! generated item per module.

mod errors;
mod expand;
mod model;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Derives a typed, field-level session. See the `typed-session` crate.
#[proc_macro_derive(Session, attributes(default, session))]
pub fn derive_session(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}
