//! The `Schema` impl (field names, per-field codecs, key strategy and expiry) and the
//! `Session` impl (the typed handle).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::{bounded_generics, initial_value, ty_span};
use crate::model::Model;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let (name, krate, handle) = (model.ident, &model.krate, &model.handle);
    let private = quote!(#krate::__private);
    let generics = bounded_generics(model);
    let (impl_g, ty_g, where_c) = generics.split_for_impl();
    let handle_args = model.generics.params.iter().map(|p| match p {
        syn::GenericParam::Type(t) => {
            let i = &t.ident;
            quote!(#i)
        }
        syn::GenericParam::Const(c) => {
            let i = &c.ident;
            quote!(#i)
        }
        syn::GenericParam::Lifetime(l) => {
            let l = &l.lifetime;
            quote!(#l)
        }
    });

    let persisted: Vec<_> = model
        .fields
        .iter()
        .filter_map(|f| Some((f.index?, f)))
        .collect();
    let specs = persisted.iter().map(|(_, f)| {
        let stored = &f.stored.value;
        let reset = f.reset_on_error.is_some();
        quote!(#private::FieldSpec::new(#stored, #reset))
    });
    // The codec calls carry the field type's span: a type that is not serde-able is reported
    // there, naming the missing trait.
    let encodes_into = persisted.iter().map(|(i, f)| {
        let (ident, ty) = (f.ident, f.ty);
        let encode = quote_spanned!(ty_span(ty)=> #private::encode_into::<#ty>);
        quote!(#i => #encode(&self.#ident, out))
    });
    let decodes = persisted.iter().map(|(i, f)| {
        let (ident, ty) = (f.ident, f.ty);
        let decode = quote_spanned!(ty_span(ty)=> #private::decode::<#ty>);
        quote! {
            #i => match #decode(raw) {
                ::core::result::Result::Ok(value) => {
                    self.#ident = value;
                    ::core::result::Result::Ok(())
                }
                ::core::result::Result::Err(error) => ::core::result::Result::Err(error),
            }
        }
    });
    let resets = persisted.iter().map(|(i, f)| {
        let (ident, value) = (f.ident, initial_value(f, &quote!(Self)));
        quote!(#i => self.#ident = #value)
    });
    let key = model.key.as_ref().map(|variant| {
        quote!(const KEY: ::core::option::Option<#private::KeyKind> = ::core::option::Option::Some(#private::KeyKind::#variant);)
    });
    let namespace = model
        .namespace
        .as_ref()
        .map(|ns| quote!(const NAMESPACE: &'static str = #ns;));
    let ttl = model.ttl_secs.map(|secs| {
        quote!(const TTL: ::core::option::Option<#private::Duration> = ::core::option::Option::Some(#private::Duration::from_secs(#secs));)
    });
    let renewal = model
        .renew_on_access
        .then(|| quote!(const RENEWAL: #private::Renewal = #private::Renewal::OnAccess;));
    let steps = &model.migrations;
    let migrations = (!steps.is_empty())
        .then(|| quote!(const MIGRATIONS: &'static [#private::MigrationStep] = &[#(#steps),*];));
    let name_str = name.to_string();

    quote! {
        #[automatically_derived]
        impl #impl_g #private::Schema for #name #ty_g #where_c {
            const NAME: &'static str = #name_str;
            const FIELDS: &'static [#private::FieldSpec] = &[#(#specs),*];
            #key
            #namespace
            #ttl
            #renewal
            #migrations

            fn encode_field_into(
                &self,
                index: usize,
                out: &mut ::std::string::String,
            ) -> ::core::result::Result<(), #private::CodecError> {
                match index {
                    #(#encodes_into,)*
                    _ => ::core::result::Result::Err(#private::no_such_field(index)),
                }
            }

            fn decode_field(
                &mut self,
                index: usize,
                raw: &str,
            ) -> ::core::result::Result<(), #private::CodecError> {
                match index {
                    #(#decodes,)*
                    _ => ::core::result::Result::Err(#private::no_such_field(index)),
                }
            }

            fn reset_field(&mut self, index: usize) {
                match index {
                    #(#resets,)*
                    _ => {}
                }
            }

        }

        #[automatically_derived]
        impl #impl_g #private::Session for #name #ty_g #where_c {
            type Handle<'__a> = #handle<'__a, #(#handle_args),*>;

            fn new_handle(inner: #private::SessionRef<'_, Self>) -> Self::Handle<'_> {
                #handle { inner }
            }
        }
    }
}
