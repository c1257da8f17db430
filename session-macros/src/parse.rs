//! Attributes into plain data. Every malformed, unknown or duplicated key is an error naming
//! the valid ones; parsing goes on after an error so all of them are reported.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, LitInt, LitStr, Path};

use crate::errors::Errors;

pub(crate) const STRUCT_KEYS: &str = "accessor, crate, key, migrations, namespace, renewal, ttl";
pub(crate) const FIELD_KEYS: &str = "rename, skip, reset_on_error";

/// A value and where it was written.
#[derive(Clone)]
pub(crate) struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// `#[session(...)]` on the struct.
#[derive(Default)]
pub(crate) struct StructAttrs {
    pub accessor: Option<Spanned<String>>,
    pub krate: Option<Path>,
    pub key: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub ttl: Option<Spanned<u64>>,
    /// `true` for `renewal = "on_access"`, `false` for `"on_write"`.
    pub renew_on_access: Option<Spanned<bool>>,
    /// `migrations = [step, ...]`: the migration steps, oldest first.
    pub migrations: Option<Vec<Expr>>,
    /// Where a `#[derive(Default)]` beside ours was seen.
    pub derives_default: Option<Span>,
}

/// `#[session(...)]` and `#[default(...)]` on a field.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    pub default: Option<Expr>,
    pub rename: Option<Spanned<String>>,
    pub skip: Option<Span>,
    pub reset_on_error: Option<Span>,
}

fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta, errors: &mut Errors) {
    if slot.is_some() {
        let name = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        errors.spanned(
            &meta.path,
            format!("duplicate `{name}` in #[session(...)]; give it once"),
        );
    } else {
        *slot = Some(value);
    }
}

fn string(meta: &ParseNestedMeta) -> syn::Result<Spanned<String>> {
    let lit: LitStr = meta.value()?.parse()?;
    Ok(Spanned {
        value: lit.value(),
        span: lit.span(),
    })
}

pub(crate) fn struct_attrs(attrs: &[Attribute], errors: &mut Errors) -> StructAttrs {
    let mut out = StructAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("derive") {
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("Default")
                    || meta
                        .path
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "Default")
                {
                    out.derives_default = Some(
                        meta.path
                            .get_ident()
                            .map_or_else(Span::call_site, |i| i.span()),
                    );
                }
                Ok(())
            });
            continue;
        }
        if attr.path().is_ident("default") {
            errors.spanned(
                attr,
                "#[default(...)] belongs on a field, not on the struct",
            );
            continue;
        }
        if !attr.path().is_ident("session") {
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("accessor") {
                let value = string(&meta)?;
                set_once(&mut out.accessor, value, &meta, errors);
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                let path: Path = lit.parse()?;
                set_once(&mut out.krate, path, &meta, errors);
            } else if meta.path.is_ident("key") {
                let value = string(&meta)?;
                set_once(&mut out.key, value, &meta, errors);
            } else if meta.path.is_ident("namespace") {
                let value = string(&meta)?;
                set_once(&mut out.namespace, value, &meta, errors);
            } else if meta.path.is_ident("ttl") {
                // A bad value is reported and parsing goes on, so later keys are checked too.
                match ttl(&meta) {
                    Ok(ttl) => set_once(&mut out.ttl, ttl, &meta, errors),
                    Err(e) => errors.push(e),
                }
            } else if meta.path.is_ident("migrations") {
                let steps: syn::ExprArray = meta.value()?.parse()?;
                set_once(&mut out.migrations, steps.elems.into_iter().collect(), &meta, errors);
            } else if meta.path.is_ident("renewal") {
                let value = string(&meta)?;
                let on_access = match value.value.as_str() {
                    "on_access" => true,
                    "on_write" => false,
                    _ => {
                        return Err(syn::Error::new(
                            value.span,
                            "renewal must be \"on_write\" (writes renew the expiry, the default) or \"on_access\" (reads renew it too)",
                        ));
                    }
                };
                let value = Spanned {
                    value: on_access,
                    span: value.span,
                };
                set_once(&mut out.renew_on_access, value, &meta, errors);
            } else if FIELD_KEYS.split(", ").any(|k| meta.path.is_ident(k)) {
                return Err(meta.error("this key belongs on a field, not on the struct"));
            } else {
                return Err(meta.error(format!(
                    "unknown key in #[session(...)] on a struct; expected one of: {STRUCT_KEYS}"
                )));
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    out
}

/// `ttl = 3600` (seconds) or `ttl = "30m"` (with one of the units s, m, h, d).
fn ttl(meta: &ParseNestedMeta) -> syn::Result<Spanned<u64>> {
    let input = meta.value()?;
    if input.peek(LitInt) {
        let lit: LitInt = input.parse()?;
        let secs = lit.base10_parse::<u64>()?;
        return positive(secs, lit.span());
    }
    let lit: LitStr = input.parse()?;
    match duration_secs(&lit.value()) {
        Some(secs) => positive(secs, lit.span()),
        None => Err(syn::Error::new(
            lit.span(),
            "ttl must be a whole number of seconds, or a string like \"90s\", \"30m\", \"12h\" or \"7d\"",
        )),
    }
}

/// `"90"`, `"90s"`, `"30m"`, `"12h"` or `"7d"` in seconds; `None` for anything else, or a
/// number of seconds that does not fit a `u64`.
fn duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

fn positive(secs: u64, span: Span) -> syn::Result<Spanned<u64>> {
    if secs == 0 {
        return Err(syn::Error::new(
            span,
            "ttl must be at least one second; leave it out for sessions that never expire",
        ));
    }
    Ok(Spanned { value: secs, span })
}

pub(crate) fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("default") {
            match &attr.meta {
                syn::Meta::List(list) if !list.tokens.is_empty() => match list.parse_args::<Expr>() {
                    Ok(expr) if out.default.is_some() => {
                        errors.spanned(expr, "duplicate #[default(...)]; give the field one default")
                    }
                    Ok(expr) => out.default = Some(expr),
                    Err(e) => errors.push(e),
                },
                syn::Meta::NameValue(nv) => errors.spanned(
                    nv,
                    format!(
                        "write the default in parentheses: #[default({})]",
                        quote::ToTokens::to_token_stream(&nv.value)
                    ),
                ),
                _ => errors.spanned(
                    attr,
                    "#[default] needs a value: write #[default(expr)], e.g. #[default(0)]; without the attribute the field uses Default::default()",
                ),
            }
            continue;
        }
        if !attr.path().is_ident("session") {
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let value = string(&meta)?;
                set_once(&mut out.rename, value, &meta, errors);
            } else if meta.path.is_ident("skip") {
                set_once(
                    &mut out.skip,
                    meta.path.require_ident()?.span(),
                    &meta,
                    errors,
                );
            } else if meta.path.is_ident("reset_on_error") {
                set_once(
                    &mut out.reset_on_error,
                    meta.path.require_ident()?.span(),
                    &meta,
                    errors,
                );
            } else if STRUCT_KEYS.split(", ").any(|k| meta.path.is_ident(k)) {
                return Err(meta.error("this key belongs on the struct, not on a field"));
            } else {
                return Err(meta.error(format!(
                    "unknown key in #[session(...)] on a field; expected one of: {FIELD_KEYS}"
                )));
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::duration_secs;

    #[test]
    fn durations_read_seconds_minutes_hours_and_days() {
        assert_eq!(duration_secs("90"), Some(90));
        assert_eq!(duration_secs(" 90s "), Some(90));
        assert_eq!(duration_secs("30m"), Some(1_800));
        assert_eq!(duration_secs("12 h"), Some(43_200));
        assert_eq!(duration_secs("7d"), Some(604_800));
        assert_eq!(
            duration_secs("0"),
            Some(0),
            "refused later, with its own message"
        );
    }

    #[test]
    fn anything_else_is_not_a_duration() {
        for bad in ["", "d", "1w", "1.5h", "-1", "1d2h", "99999999999999999999d"] {
            assert_eq!(duration_secs(bad), None, "{bad:?}");
        }
    }
}
