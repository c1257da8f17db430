//! The context accessor: a trait with one method (`session` unless `accessor = "..."`),
//! implemented for the runtime's context.

use proc_macro2::TokenStream;
use quote::quote;

use super::{bounded_generics, type_args};
use crate::model::Model;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let (name, vis, krate) = (model.ident, model.vis, &model.krate);
    let (handle, access, accessor) = (&model.handle, &model.access_trait, &model.accessor);
    let private = quote!(#krate::__private);
    let generics = bounded_generics(model);
    let (trait_impl_g, ty_g, where_c) = generics.split_for_impl();
    let args = type_args(model);
    let trait_args = (!args.is_empty()).then(|| quote!(<#(#args),*>));

    let mut impl_generics = generics.clone();
    impl_generics
        .params
        .push(syn::parse_quote!(__U: ::core::marker::Send + ::core::marker::Sync + 'static));
    let (impl_g, _, _) = impl_generics.split_for_impl();

    let doc_trait = format!(
        "Adds `ctx.{accessor}()` for the [`{name}`] session to the context. Bring it into scope \
         where the session is used."
    );
    let doc_method = format!(
        "The [`{name}`] session of this update, loaded from the store on first use.\n\n\
         # Errors\n\n\
         When the update has no key, the session's middleware is not in the chain before this \
         point, the update was already persisted, or the store cannot load it."
    );
    let output = quote! {
        impl ::core::future::Future<
            Output = ::core::result::Result<#handle<'_, #(#args),*>, #private::SessionError>,
        > + ::core::marker::Send + '_
    };

    quote! {
        #[doc = #doc_trait]
        #vis trait #access #trait_impl_g #where_c {
            #[doc = #doc_method]
            fn #accessor(&self) -> #output;
        }

        #[automatically_derived]
        impl #impl_g #access #trait_args for #private::Context<__U> #where_c {
            fn #accessor(&self) -> #output {
                self.session_of::<#name #ty_g>()
            }
        }
    }
}
