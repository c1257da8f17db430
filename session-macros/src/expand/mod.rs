//! Generated code, one module per item: the `Default` impl, the `Session` impl, the typed
//! handle, the context accessor and the axum extractor. Generated code names runtime items only through
//! `<crate>::__private` and `::core`/`::std` paths, so user code that shadows `Option`,
//! `Result` or `serde` cannot break it.

mod accessor;
mod default_impl;
mod extractor;
mod handle;
mod session_impl;

pub(crate) use handle::own_method_names;

use proc_macro2::{Ident, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::{DeriveInput, GenericParam, Generics, Type, parse_quote};

use crate::errors::Errors;
use crate::model::{self, Field, Model};
use crate::validate;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let code = match model::build(input, &mut errors) {
        Some(model) if validate::check(&model, &mut errors) => {
            let default_impl = default_impl::expand(&model);
            let session_impl = session_impl::expand(&model);
            let handle = handle::expand(&model);
            let accessor = accessor::expand(&model);
            let extractor = extractor::expand(&model);
            quote! { #default_impl #session_impl #handle #accessor #extractor }
        }
        _ => TokenStream::new(),
    };
    let errors = errors.into_compile_errors();
    quote! { #errors #code }
}

/// The struct's generics with the bounds generated impls need: type parameters are
/// `Send + Sync + 'static`, and field types that mention one are serde-able (persisted fields)
/// and `Default` (fields without `#[default]`). Non-generic structs get no extra bounds, so a
/// wrong field type errors at the field, once.
pub(crate) fn bounded_generics(model: &Model) -> Generics {
    let mut generics = model.generics.clone();
    let params: Vec<Ident> = generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            _ => None,
        })
        .collect();
    if params.is_empty() {
        return generics;
    }
    let krate = &model.krate;
    let where_clause = generics.make_where_clause();
    for param in &params {
        where_clause.predicates.push(parse_quote!(
            #param: ::core::marker::Send + ::core::marker::Sync + 'static
        ));
    }
    for field in model.fields.iter().filter(|f| mentions(f.ty, &params)) {
        let ty = field.ty;
        if !field.skip {
            where_clause.predicates.push(parse_quote!(
                #ty: #krate::__private::serde::Serialize + #krate::__private::serde::de::DeserializeOwned
            ));
        }
        if field.default.is_none() {
            where_clause
                .predicates
                .push(parse_quote!(#ty: ::core::default::Default));
        }
    }
    generics
}

/// The struct's type and const parameters, by name, as the generated handle takes them after
/// its lifetime (`CartHandle<'a, T, N>`).
pub(crate) fn type_args(model: &Model) -> Vec<Ident> {
    model
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            GenericParam::Const(c) => Some(c.ident.clone()),
            GenericParam::Lifetime(_) => None,
        })
        .collect()
}

fn mentions(ty: &Type, params: &[Ident]) -> bool {
    fn walk(tokens: TokenStream, params: &[Ident]) -> bool {
        tokens.into_iter().any(|t| match t {
            TokenTree::Ident(i) => params.contains(&i),
            TokenTree::Group(g) => walk(g.stream(), params),
            _ => false,
        })
    }
    walk(ty.to_token_stream(), params)
}

/// The expression that builds a field's initial value.
/// `self_ty` is how the session type is named where the expression goes (`Self` inside its
/// own impls).
pub(crate) fn initial_value(field: &Field, self_ty: &TokenStream) -> TokenStream {
    let ty = field.ty;
    match &field.default {
        Some(_) => {
            let f = field.default_fn();
            quote!(#self_ty::#f())
        }
        None => quote::quote_spanned!(ty_span(ty)=> <#ty as ::core::default::Default>::default()),
    }
}

pub(crate) fn ty_span(ty: &Type) -> proc_macro2::Span {
    syn::spanned::Spanned::span(ty)
}

#[cfg(test)]
mod tests {
    use super::{derive, own_method_names};

    fn expanded() -> String {
        let input: syn::DeriveInput = syn::parse_quote! {
            struct Cart {
                #[default(0)]
                items: u32,
            }
        };
        derive(&input).to_string()
    }

    #[test]
    fn every_generated_trait_impl_is_marked_automatically_derived() {
        let file: syn::File = syn::parse_str(&expanded()).expect("the expansion parses");
        let trait_impls: Vec<&syn::ItemImpl> = file
            .items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Impl(item) if item.trait_.is_some() => Some(item),
                _ => None,
            })
            .collect();
        assert!(trait_impls.len() >= 5, "{} trait impls", trait_impls.len());
        for item in trait_impls {
            assert!(
                item.attrs
                    .iter()
                    .any(|attr| attr.path().is_ident("automatically_derived")),
                "not marked: impl of {}",
                quote::ToTokens::to_token_stream(&item.trait_.as_ref().map(|t| &t.1))
            );
        }
    }

    #[test]
    fn the_handle_defines_each_method_its_names_list() {
        let code = expanded();
        for name in own_method_names() {
            assert!(
                code.contains(&format!("pub fn {name} (")),
                "no `{name}` in {code}"
            );
        }
    }
}
