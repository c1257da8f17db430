//! The typed description of one session struct, with the spans errors point at.

use proc_macro2::Span;
use quote::format_ident;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Expr, Fields, Generics, Ident, Path, Type, Visibility};

use crate::errors::Errors;
use crate::parse::{self, Spanned};

pub(crate) struct Model<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub generics: &'a Generics,
    /// The context method, `session` unless `accessor = "..."`.
    pub accessor: Ident,
    /// The path generated code uses for the facade crate.
    pub krate: Path,
    /// The `KeyKind` variant of `key = "..."`.
    pub key: Option<Ident>,
    /// What sets the type's stored records apart, when `namespace = "..."` names it.
    pub namespace: Option<String>,
    pub ttl_secs: Option<u64>,
    /// `renewal = "on_access"`.
    pub renew_on_access: bool,
    /// `migrations = [..]`, oldest first.
    pub migrations: Vec<syn::Expr>,
    pub fields: Vec<Field<'a>>,
    pub derives_default: Option<Span>,
    /// The generated handle type.
    pub handle: Ident,
    /// The generated accessor trait.
    pub access_trait: Ident,
}

pub(crate) struct Field<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub default: Option<Expr>,
    /// The name the field is stored under.
    pub stored: Spanned<String>,
    pub skip: bool,
    pub reset_on_error: Option<Span>,
    /// Its number among the persisted fields; `None` when skipped.
    pub index: Option<usize>,
}

impl Field<'_> {
    /// The field's name without `r#`, for derived method names.
    pub(crate) fn name(&self) -> String {
        self.ident.unraw().to_string()
    }

    /// The hidden function that returns its `#[default(...)]`.
    pub(crate) fn default_fn(&self) -> Ident {
        format_ident!("__typed_session_default_{}", self.name())
    }
}

/// Builds the model; `None` when the input is not a struct with named fields.
pub(crate) fn build<'a>(input: &'a DeriveInput, errors: &mut Errors) -> Option<Model<'a>> {
    let attrs = parse::struct_attrs(&input.attrs, errors);
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => Some(named),
            Fields::Unnamed(fields) => {
                errors.spanned(
                    fields,
                    "#[derive(Session)] needs named fields, so each can be stored under its name; \
                     write `struct Name { field: Type, .. }`",
                );
                None
            }
            Fields::Unit => {
                errors.spanned(
                    &input.ident,
                    "#[derive(Session)] needs a struct with named fields; a unit struct has nothing to store",
                );
                None
            }
        },
        Data::Enum(data) => {
            errors.at(
                data.enum_token.span,
                "#[derive(Session)] works on structs with named fields, not enums; \
                 wrap the enum in a struct field: `struct State { step: Step }`",
            );
            None
        }
        Data::Union(data) => {
            errors.at(
                data.union_token.span,
                "#[derive(Session)] works on structs with named fields, not unions",
            );
            None
        }
    };

    let mut next_index = 0;
    let fields = named?
        .named
        .iter()
        .filter_map(|f| {
            let ident = f.ident.as_ref()?;
            let attrs = parse::field_attrs(&f.attrs, errors);
            let skip = attrs.skip.is_some();
            let index = (!skip).then(|| {
                next_index += 1;
                next_index - 1
            });
            let stored = attrs.rename.unwrap_or_else(|| Spanned {
                value: ident.unraw().to_string(),
                span: ident.span(),
            });
            Some(Field {
                ident,
                ty: &f.ty,
                default: attrs.default,
                stored,
                skip,
                reset_on_error: attrs.reset_on_error,
                index,
            })
        })
        .collect();

    let accessor = match attrs.accessor {
        Some(Spanned { value, span }) => {
            match syn::parse_str::<Ident>(&value) {
                Ok(ident) => Ident::new(&ident.to_string(), span),
                Err(_) => {
                    errors.at(span, format!("accessor {value:?} is not a method name; write e.g. accessor = \"profile\""));
                    Ident::new("session", span)
                }
            }
        }
        None => Ident::new("session", Span::call_site()),
    };
    let key = attrs.key.and_then(|Spanned { value, span }| {
        let variant = match value.as_str() {
            "user_in_chat" => "UserInChat",
            "chat" => "Chat",
            "user" => "User",
            _ => {
                errors.at(span, format!("unknown key strategy {value:?}; expected one of: user_in_chat, chat, user (for a custom key, pass KeyStrategy::custom to the middleware builder)"));
                return None;
            }
        };
        Some(Ident::new(variant, span))
    });

    let namespace = attrs.namespace.and_then(|Spanned { value, span }| {
        if value.is_empty() || value.contains(':') {
            errors.at(span, format!("namespace {value:?} must be non-empty and without ':' (the stored key is \"{{namespace}}:{{key}}\"); write e.g. namespace = \"profile\""));
            return None;
        }
        Some(value)
    });

    Some(Model {
        ident: &input.ident,
        vis: &input.vis,
        generics: &input.generics,
        accessor,
        krate: attrs
            .krate
            .unwrap_or_else(|| syn::parse_quote!(::typed_session)),
        key,
        namespace,
        ttl_secs: attrs.ttl.map(|t| t.value),
        renew_on_access: attrs.renew_on_access.is_some_and(|r| r.value),
        migrations: attrs.migrations.unwrap_or_default(),
        fields,
        derives_default: attrs.derives_default,
        handle: format_ident!("{}Handle", input.ident),
        access_trait: format_ident!("{}Access", input.ident),
    })
}
