//! The `Default` impl, built from each field's `#[default(...)]` or `Default::default()`.

use proc_macro2::TokenStream;
use quote::quote;

use super::{bounded_generics, initial_value};
use crate::model::Model;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let name = model.ident;
    let generics = bounded_generics(model);
    let (impl_g, ty_g, where_c) = generics.split_for_impl();

    // One function per `#[default(expr)]`: the expression is type-checked once, against the
    // field's type, and a mismatch is reported at the expression.
    let default_fns = model.fields.iter().filter_map(|f| {
        let expr = f.default.as_ref()?;
        let (fn_name, ty) = (f.default_fn(), f.ty);
        Some(quote! {
            #[doc(hidden)]
            #[allow(non_snake_case, clippy::all)]
            fn #fn_name() -> #ty {
                #expr
            }
        })
    });
    let default_fns = quote! {
        impl #impl_g #name #ty_g #where_c {
            #(#default_fns)*
        }
    };

    // A `#[derive(Default)]` beside ours is reported by validation; generating ours as well
    // would only add a conflicting-impl error.
    if model.derives_default.is_some() {
        return default_fns;
    }
    let inits = model.fields.iter().map(|f| {
        let (ident, value) = (f.ident, initial_value(f, &quote!(Self)));
        quote!(#ident: #value)
    });
    quote! {
        #default_fns

        #[automatically_derived]
        impl #impl_g ::core::default::Default for #name #ty_g #where_c {
            fn default() -> Self {
                Self { #(#inits,)* }
            }
        }
    }
}
