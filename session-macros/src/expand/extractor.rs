//! The typed handle as an axum extractor: `async fn add(cart: CartHandle<'static>)`. Emitted
//! through the runtime's `if_axum!`, so it exists only when the runtime's `axum` feature is on.

use proc_macro2::TokenStream;
use quote::quote;

use super::{bounded_generics, type_args};
use crate::model::Model;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let (name, handle, krate) = (model.ident, &model.handle, &model.krate);
    let private = quote!(#krate::__private);
    let generics = bounded_generics(model);
    let (_, ty_g, where_c) = generics.split_for_impl();
    let args = type_args(model);
    let mut impl_generics = generics.clone();
    impl_generics.params.push(syn::parse_quote!(
        __St: ::core::marker::Send + ::core::marker::Sync
    ));
    let (impl_g, _, _) = impl_generics.split_for_impl();

    quote! {
        #private::if_axum! {
            #[automatically_derived]
            impl #impl_g #private::FromRequestParts<__St> for #handle<'static, #(#args),*> #where_c {
                type Rejection = #private::SessionError;

                fn from_request_parts(
                    parts: &mut #private::Parts,
                    _state: &__St,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<Self, Self::Rejection>,
                > + ::core::marker::Send {
                    #private::extract_handle::<#name #ty_g>(parts)
                }
            }
        }
    }
}
