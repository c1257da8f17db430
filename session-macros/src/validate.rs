//! Checks that need the whole struct.

use std::collections::HashMap;

use syn::GenericParam;

use crate::errors::Errors;
use crate::model::Model;

/// Reports what is wrong; returns `false` when generating code would only add errors that
/// follow from the ones reported.
pub(crate) fn check(model: &Model, errors: &mut Errors) -> bool {
    let mut generate = true;
    if let Some(span) = model.derives_default {
        errors.at(
            span,
            "remove `Default` from the derives: #[derive(Session)] generates `Default` from the fields' #[default(...)] values",
        );
    }
    for param in &model.generics.params {
        match param {
            GenericParam::Lifetime(l) => {
                errors.spanned(
                    l,
                    "a session cannot borrow: it outlives every update; use owned types such as String instead of &str",
                );
                generate = false;
            }
            GenericParam::Const(_) | GenericParam::Type(_) => {}
        }
    }

    let mut stored: HashMap<&str, &syn::Ident> = HashMap::new();
    for field in &model.fields {
        if field.skip {
            if let Some(span) = field.reset_on_error {
                errors.at(
                    span,
                    "`reset_on_error` has no effect on a `skip` field, which is never loaded",
                );
            }
        } else if let Some(first) = stored.insert(&field.stored.value, field.ident) {
            errors.at(
                field.stored.span,
                format!(
                    "field `{}` is stored under {:?}, which field `{}` already uses; give one of them #[session(rename = \"...\")]",
                    field.ident, field.stored.value, first
                ),
            );
        }
        if field.stored.value.is_empty() {
            errors.at(field.stored.span, "a stored field name cannot be empty");
        }
        if field.stored.value.contains(['"', '\\'])
            || field.stored.value.chars().any(char::is_control)
        {
            errors.at(
                field.stored.span,
                "a stored field name cannot contain '\"', '\\' or control characters (SQL stores address fields by JSON path)",
            );
        }
        if field.stored.value.starts_with('@') {
            errors.at(
                field.stored.span,
                "stored field names starting with '@' are reserved for the runtime (the exclusive-mode lease is stored as \"@lease\")",
            );
        }
        let name = field.name();
        if crate::expand::own_method_names().any(|method| method == name) {
            errors.spanned(
                field.ident,
                format!(
                    "a field named `{name}` would clash with the handle's own `{name}()` method; rename the field and keep its stored name with #[session(rename = \"{name}\")]"
                ),
            );
        }
    }
    generate
}
