//! The attribute's arguments: parsed leniently (every value is an expression),
//! then checked one by one so every mistake is reported in the same pass.

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Path, Token};

use crate::errors::Errors;

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Idempotent,
    NonIdempotent,
    Workflow,
}

impl Kind {
    pub(crate) fn attr(self) -> &'static str {
        match self {
            Kind::Idempotent => "#[idempotent]",
            Kind::NonIdempotent => "#[non_idempotent]",
            Kind::Workflow => "#[workflow]",
        }
    }

    fn allowed(self) -> &'static [&'static str] {
        match self {
            Kind::Idempotent => &[
                "key",
                "name",
                "compensate",
                "in_flight",
                "retention",
                "lease",
                "retry",
                "cache_errors",
            ],
            Kind::NonIdempotent => &[
                "key",
                "name",
                "compensate",
                "in_flight",
                "probe",
                "retention",
                "lease",
                "cache_errors",
            ],
            Kind::Workflow => &[
                "key",
                "name",
                "recover",
                "rollback",
                "deadline",
                "in_flight",
                "retention",
                "lease",
            ],
        }
    }
}

/// `compensate = noop` or `compensate = path::to::f`.
pub(crate) enum Compensate {
    Noop,
    Call(Path),
}

/// `recover = resume | rollback`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recover {
    Resume,
    Rollback,
}

/// A value with the name token it was given under (for spans).
pub(crate) struct Arg<T> {
    pub(crate) name: Ident,
    pub(crate) value: T,
}

/// The checked arguments. `None`: not given (or given wrongly, with an error
/// recorded).
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) key: Option<Arg<Expr>>,
    pub(crate) name: Option<Arg<LitStr>>,
    pub(crate) compensate: Option<Arg<Compensate>>,
    pub(crate) in_flight_reject: Option<Arg<bool>>,
    pub(crate) probe: Option<Arg<Path>>,
    pub(crate) retention_ms: Option<Arg<u64>>,
    pub(crate) lease_ms: Option<Arg<u64>>,
    pub(crate) retry: Option<Arg<u32>>,
    pub(crate) cache_errors: Option<Arg<bool>>,
    pub(crate) recover: Option<Arg<Recover>>,
    /// `rollback = continue`: go on past a dead-lettered compensation.
    pub(crate) rollback_continue: Option<Arg<bool>>,
    /// `deadline = "15m"`: a workflow not completed by then is rolled back.
    pub(crate) deadline_ms: Option<Arg<u64>>,
}

/// Stores `value` unless the argument was given before (a duplicate is an error,
/// never a silent overwrite).
fn set<T>(slot: &mut Option<Arg<T>>, name: &Ident, value: T, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(name, format!("duplicate argument `{name}`; give it once"));
    } else {
        *slot = Some(Arg {
            name: name.clone(),
            value,
        });
    }
}

/// Parses `tokens` (the attribute's arguments) for `kind`.
pub(crate) fn parse_args(tokens: TokenStream, kind: Kind, errors: &mut Errors) -> Args {
    let mut raw: Vec<(Ident, Option<Expr>)> = Vec::new();
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        while !input.is_empty() {
            let name = input.call(Ident::parse_any)?;
            let value = if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                Some(input.parse::<Expr>()?)
            } else {
                None
            };
            raw.push((name, value));
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        errors.push_error(e);
    }
    let mut args = Args::default();
    for (name, value) in raw {
        check_arg(&mut args, kind, &name, value, errors);
    }
    args
}

fn check_arg(args: &mut Args, kind: Kind, name: &Ident, value: Option<Expr>, errors: &mut Errors) {
    let n = name.to_string();
    if !kind.allowed().contains(&n.as_str()) {
        let message = match (kind, n.as_str()) {
            (Kind::Idempotent, "probe") => "`probe` is for `#[non_idempotent]` operations; an idempotent operation is simply run again after a crash".to_owned(),
            (Kind::NonIdempotent, "retry") => "`retry` is for `#[idempotent]` operations; a non-idempotent effect is never run again automatically".to_owned(),
            (Kind::Workflow, "compensate") => "a `#[workflow]` takes no `compensate`: it is undone by rolling back its completed steps, each through its own compensation".to_owned(),
            (Kind::Workflow, "retry" | "probe" | "cache_errors") => format!("`{n}` is an argument of the operations a workflow calls, not of `#[workflow]`"),
            (Kind::Idempotent | Kind::NonIdempotent, "deadline") => format!("`deadline` is for `#[workflow]`, which is rolled back when it passes; bound the body of this `{}` operation with a timeout of its own instead", kind.attr()),
            _ => {
                let supported = kind
                    .allowed()
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                match closest(&n, kind.allowed()) {
                    Some(near) => format!(
                        "unknown argument `{n}` for `{}`: did you mean `{near}`? supported arguments are: {supported}",
                        kind.attr()
                    ),
                    None => format!(
                        "unknown argument `{n}` for `{}`; supported arguments are: {supported}",
                        kind.attr()
                    ),
                }
            }
        };
        errors.push(name, message);
        return;
    }
    // `cache_errors` alone means `cache_errors = true`.
    if n == "cache_errors" && value.is_none() {
        set(&mut args.cache_errors, name, true, errors);
        return;
    }
    let Some(value) = value else {
        errors.push(name, format!("`{n}` needs a value: {}", expected(&n)));
        return;
    };
    let wrong = |errors: &mut Errors, value: &Expr| {
        errors.push(value, format!("`{n}` expects {}", expected(&n)));
    };
    match n.as_str() {
        "key" => set(&mut args.key, name, value, errors),
        "name" => match lit_str(&value) {
            Some(s) => match check_name(&s.value()) {
                Ok(()) => set(&mut args.name, name, s.clone(), errors),
                Err(why) => errors.push(
                    s,
                    format!("invalid operation name `{:?}`: {why}", s.value()),
                ),
            },
            None => wrong(errors, &value),
        },
        "compensate" => match &value {
            Expr::Path(p) if p.qself.is_none() && p.path.is_ident("noop") => {
                set(&mut args.compensate, name, Compensate::Noop, errors);
            }
            Expr::Path(p) if p.qself.is_none() => {
                set(
                    &mut args.compensate,
                    name,
                    Compensate::Call(p.path.clone()),
                    errors,
                );
            }
            _ => wrong(errors, &value),
        },
        "probe" => match &value {
            Expr::Path(p) if p.qself.is_none() => {
                set(&mut args.probe, name, p.path.clone(), errors);
            }
            _ => wrong(errors, &value),
        },
        "in_flight" => match ident(&value).as_deref() {
            Some("wait") => set(&mut args.in_flight_reject, name, false, errors),
            Some("reject") => set(&mut args.in_flight_reject, name, true, errors),
            _ => wrong(errors, &value),
        },
        "recover" => match ident(&value).as_deref() {
            Some("resume") => set(&mut args.recover, name, Recover::Resume, errors),
            Some("rollback") => set(&mut args.recover, name, Recover::Rollback, errors),
            _ => wrong(errors, &value),
        },
        "rollback" => match (&value, ident(&value).as_deref()) {
            (_, Some("strict")) => set(&mut args.rollback_continue, name, false, errors),
            // `continue` is a keyword: it parses as a `continue` expression.
            (Expr::Continue(c), _) if c.label.is_none() => {
                set(&mut args.rollback_continue, name, true, errors);
            }
            _ => wrong(errors, &value),
        },
        "retention" | "lease" | "deadline" => {
            let parsed = lit_str(&value).map(|s| (s.span(), parse_duration(&s.value())));
            let slot = match n.as_str() {
                "lease" => &mut args.lease_ms,
                "deadline" => &mut args.deadline_ms,
                _ => &mut args.retention_ms,
            };
            match parsed {
                Some((_, Ok(ms))) if n == "lease" && ms < 10 => {
                    errors.push(&value, "`lease` must be at least `\"10ms\"`");
                }
                Some((_, Ok(ms))) if ms > MAX_MS => {
                    errors.push(
                        &value,
                        format!("`{n}` is too long: at most a century (`\"36500d\"`), so that every store can hold the time it ends at"),
                    );
                }
                Some((_, Ok(ms))) => set(slot, name, ms, errors),
                Some((span, Err(why))) => {
                    errors.push_at(span, format!("`{n}` expects {}: {why}", expected(&n)))
                }
                None => wrong(errors, &value),
            }
        }
        "retry" => match &value {
            Expr::Lit(ExprLit {
                lit: Lit::Int(i), ..
            }) => match i.base10_parse::<u32>() {
                Ok(0) => errors.push(i, "`retry = 0` is the default; remove it"),
                Ok(r) => set(&mut args.retry, name, r, errors),
                Err(_) => wrong(errors, &value),
            },
            _ => wrong(errors, &value),
        },
        "cache_errors" => match &value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(b), ..
            }) => set(&mut args.cache_errors, name, b.value, errors),
            _ => wrong(errors, &value),
        },
        _ => errors.push(name, format!("argument `{n}` is not handled")),
    }
}

fn expected(name: &str) -> &'static str {
    match name {
        "key" => "an expression whose value is the key, e.g. `key = order.id`",
        "name" => "a string literal, e.g. `name = \"payments.charge\"`",
        "compensate" => {
            "the path of an `#[idempotent]` function, e.g. `compensate = refund`, or `noop`"
        }
        "probe" => "the path of a function, e.g. `probe = find_charge`",
        "in_flight" => "`wait` or `reject`",
        "recover" => "`resume` or `rollback`",
        "rollback" => "`strict` (stop at a dead-lettered compensation, the default) or `continue`",
        "retention" | "lease" | "deadline" => {
            "a duration string such as `\"500ms\"`, `\"30s\"`, `\"15m\"`, `\"24h\"` or `\"7d\"`"
        }
        "retry" => {
            "a positive integer: how many more times to run a failing body, e.g. `retry = 3`"
        }
        "cache_errors" => "`true` or `false` (or just `cache_errors`)",
        _ => "a value",
    }
}

fn lit_str(e: &Expr) -> Option<&LitStr> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        _ => None,
    }
}

fn ident(e: &Expr) -> Option<String> {
    match e {
        Expr::Path(p) => p.path.get_ident().map(Ident::to_string),
        _ => None,
    }
}

/// An operation name: the record id is `name/key`, so no `/`; no whitespace or
/// control characters, so it prints and parses back.
fn check_name(name: &str) -> Result<(), String> {
    const ALLOWED: &str = "use letters, digits, `.`, `_`, `-` and `:`, as in `\"payments.charge\"`";
    if name.is_empty() {
        return Err(format!("it is empty; {ALLOWED}"));
    }
    if name.contains('/') {
        return Err(format!(
            "`/` separates the name from the key in record ids; {ALLOWED}"
        ));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!("it contains whitespace; {ALLOWED}"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("it contains a control character; {ALLOWED}"));
    }
    Ok(())
}

/// The allowed argument nearest to a misspelt one, if any is near.
fn closest(name: &str, allowed: &[&'static str]) -> Option<&'static str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3) && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance, with a transposition counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The longest duration an attribute takes: a century, as the runtime's
/// builder (no store could hold a time further ahead).
const MAX_MS: u64 = 100 * 365 * 86_400_000;

/// `"500ms"`, `"30s"`, `"15m"`, `"24h"`, `"7d"` → milliseconds.
pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit `{unit}`")),
    };
    let ms = number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too long"))?;
    if ms == 0 {
        return Err("it is zero".into());
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_to_milliseconds() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("15m"), Ok(900_000));
        assert_eq!(parse_duration("24h"), Ok(86_400_000));
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn a_misspelt_argument_gets_the_nearest_name() {
        let allowed = Kind::Idempotent.allowed();
        assert_eq!(closest("kye", allowed), Some("key"));
        assert_eq!(closest("nmae", allowed), Some("name"));
        assert_eq!(closest("compensation", allowed), Some("compensate"));
        assert_eq!(closest("inflight", allowed), Some("in_flight"));
        assert_eq!(closest("colour", allowed), None);
        assert_eq!(closest("timeout", allowed), None);
    }

    #[test]
    fn operation_names_exclude_slash_and_whitespace() {
        assert!(check_name("payments.charge").is_ok());
        assert!(check_name("shop:v2-reserve_1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a\u{7}b").is_err());
    }
}
