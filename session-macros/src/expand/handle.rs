//! The typed handle: a getter, `with_`, `set_`, `update_` and `reset_` per field, plus
//! `snapshot`, `replace` and `clear`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{GenericParam, Lifetime};

use super::{bounded_generics, initial_value};
use crate::model::{Field, Model};

pub(crate) fn expand(model: &Model) -> TokenStream {
    let (name, vis, krate, handle) = (model.ident, model.vis, &model.krate, &model.handle);
    let private = quote!(#krate::__private);
    let struct_generics = bounded_generics(model);
    let (_, struct_ty_g, _) = struct_generics.split_for_impl();
    let session_ty = quote!(#name #struct_ty_g);

    let mut generics = struct_generics.clone();
    let lifetime = Lifetime::new("'__a", proc_macro2::Span::call_site());
    generics.params.insert(
        0,
        GenericParam::Lifetime(syn::LifetimeParam::new(lifetime.clone())),
    );
    if !model.generics.params.is_empty() {
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(#session_ty: #private::Session));
    }
    let (impl_g, ty_g, where_c) = generics.split_for_impl();

    let methods = model
        .fields
        .iter()
        .map(|f| field_methods(f, &session_ty, &private));
    let own_methods = own_methods(model, &session_ty);
    let doc = format!(
        "Typed handle of the [`{name}`] session of one update, returned by its context accessor.\n\n\
         Getters return copies, `with_*` lend a field to a closure, `set_*` and `update_*` change it \
         and mark it for the persist after the chain; reads never mark anything."
    );

    quote! {
        #[doc = #doc]
        #vis struct #handle #impl_g #where_c {
            inner: #private::SessionRef<#lifetime, #session_ty>,
        }

        #[automatically_derived]
        impl #impl_g ::core::clone::Clone for #handle #ty_g #where_c {
            fn clone(&self) -> Self {
                Self { inner: ::core::clone::Clone::clone(&self.inner) }
            }
        }

        #[automatically_derived]
        impl #impl_g ::core::fmt::Debug for #handle #ty_g #where_c {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#handle)).field("key", &self.inner.key()).finish_non_exhaustive()
            }
        }

        #[allow(dead_code, clippy::all)]
        impl #impl_g #handle #ty_g #where_c {
            #(#methods)*

            #(#own_methods)*
        }
    }
}

fn field_methods(field: &Field, session_ty: &TokenStream, private: &TokenStream) -> TokenStream {
    let (ident, ty, name) = (field.ident, field.ty, field.name());
    let with = format_ident!("with_{}", name);
    let set = format_ident!("set_{}", name);
    let update = format_ident!("update_{}", name);
    let reset = format_ident!("reset_{}", name);
    let init = initial_value(field, &quote!(<#session_ty>));
    let (read_index, write, modify, reset_body) = match field.index {
        Some(i) => (
            quote!(::core::option::Option::Some(#i)),
            quote!(self.inner.set(#i, move |s| s.#ident = #private::IntoField::into_field(value))),
            quote!(self.inner.update(#i, |s| f(&mut s.#ident))),
            quote!(self.inner.reset(#i)),
        ),
        // Skipped fields live only in the shared live value; nothing is marked.
        None => (
            quote!(::core::option::Option::None),
            quote!(self.inner.update_transient(move |s| s.#ident = #private::IntoField::into_field(value))),
            quote!(self.inner.update_transient(|s| f(&mut s.#ident))),
            quote!(self.inner.update_transient(|s| s.#ident = #init)),
        ),
    };
    let doc_get = format!("A copy of `{name}`.");
    let doc_with = format!("Lends `{name}` to `f` and returns what it returns.");
    let (doc_set, doc_update, doc_reset) = if field.index.is_some() {
        (
            format!(
                "Sets `{name}`. If another update changed it after this one read it, the write is reported as stale; use [`Self::{update}`] to read and write atomically."
            ),
            format!("Changes `{name}` in place: an atomic read-modify-write."),
            format!("Sets `{name}` back to its default and removes it from the store."),
        )
    } else {
        (
            format!(
                "Sets `{name}`, which is not persisted (`skip`): it lives while the session is live."
            ),
            format!("Changes `{name}` in place; not persisted (`skip`)."),
            format!("Sets `{name}` back to its initial value; not persisted (`skip`)."),
        )
    };
    quote! {
        #[doc = #doc_get]
        #[inline]
        pub fn #ident(&self) -> #ty
        where
            for<'__z> #ty: #private::CloneField,
        {
            self.inner.read(#read_index, |s| ::core::clone::Clone::clone(&s.#ident))
        }

        #[doc = #doc_with]
        #[inline]
        pub fn #with<__R>(&self, f: impl ::core::ops::FnOnce(&#ty) -> __R) -> __R {
            self.inner.read(#read_index, |s| f(&s.#ident))
        }

        #[doc = #doc_set]
        #[inline]
        pub fn #set(&self, value: impl #private::IntoField<#ty>) {
            #write
        }

        #[doc = #doc_update]
        #[inline]
        pub fn #update<__R>(&self, f: impl ::core::ops::FnOnce(&mut #ty) -> __R) -> __R {
            #modify
        }

        #[doc = #doc_reset]
        #[inline]
        pub fn #reset(&self) {
            #reset_body
        }
    }
}

/// The handle's own methods, less any a field's getter takes the name of (that clash is
/// reported by validation; generating both would only add a duplicate-definition error).
fn own_methods(model: &Model, session_ty: &TokenStream) -> Vec<TokenStream> {
    methods(session_ty)
        .into_iter()
        .filter(|(name, _)| !model.fields.iter().any(|f| f.name() == *name))
        .map(|(_, method)| method)
        .collect()
}

/// The names of the handle's own methods: a field of one of these names would clash.
pub(crate) fn own_method_names() -> impl Iterator<Item = &'static str> {
    methods(&quote!(Self)).into_iter().map(|(name, _)| name)
}

/// The handle's own methods, each with its name: the one list of them.
fn methods(session_ty: &TokenStream) -> [(&'static str, TokenStream); 6] {
    [
        (
            "key",
            quote! {
                /// The session key this handle belongs to.
                pub fn key(&self) -> &str {
                    self.inner.key()
                }
            },
        ),
        (
            "is_live",
            quote! {
                /// Whether its update is still running (always true for a handle that borrows the
                /// context).
                pub fn is_live(&self) -> bool {
                    self.inner.is_live()
                }
            },
        ),
        (
            "is_redelivery",
            quote! {
                /// Whether this update was recognised as a delivery of one whose session writes
                /// are saved already: its writes are not applied again. Effects outside the
                /// session (a message sent) are the handler's to skip.
                pub fn is_redelivery(&self) -> bool {
                    self.inner.is_redelivery()
                }
            },
        ),
        (
            "snapshot",
            quote! {
                /// A copy of the whole session.
                pub fn snapshot(&self) -> #session_ty
                where
                    for<'__z> #session_ty: ::core::clone::Clone,
                {
                    self.inner.snapshot()
                }
            },
        ),
        (
            "replace",
            quote! {
                /// Replaces the whole session; only the fields whose value changed are written.
                pub fn replace(&self, value: #session_ty) {
                    self.inner.replace(value)
                }
            },
        ),
        (
            "clear",
            quote! {
                /// Deletes the session from the store after the chain; reads see defaults from now on.
                pub fn clear(&self) {
                    self.inner.clear()
                }
            },
        ),
    ]
}
