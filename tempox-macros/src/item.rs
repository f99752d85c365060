//! The annotated function: its signature is checked, its body kept as tokens.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, GenericParam, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::args::Kind;
use crate::errors::Errors;

/// One argument, by name.
pub(crate) struct Param {
    pub(crate) ident: syn::Ident,
    pub(crate) mutability: Option<syn::Token![mut]>,
    pub(crate) ty: Type,
}

/// The checked function.
pub(crate) struct Item {
    pub(crate) fun: ItemFn,
    pub(crate) params: Vec<Param>,
    /// The whole return type.
    pub(crate) ret: Type,
    /// `T` of `Result<T, E>` (a projection when the return type is an alias).
    pub(crate) output: TokenStream,
    /// `E` of `Result<T, E>`.
    pub(crate) error: TokenStream,
    /// Whether the return type is written `Result<T, E>` (else it is an alias, or
    /// not a `Result` at all, and only the type checker can tell).
    pub(crate) written_result: bool,
    /// Whether the function takes `self` (it is a method: no companion struct can
    /// sit next to it).
    pub(crate) is_method: bool,
}

/// Parses the annotated item. `None` if it is not a function at all (the error is
/// recorded); otherwise every signature problem is recorded and the item kept.
pub(crate) fn parse_item(tokens: TokenStream, kind: Kind, errors: &mut Errors) -> Option<Item> {
    let attr = kind.attr();
    let fun: ItemFn = match syn::parse2(tokens) {
        Ok(f) => f,
        Err(e) => {
            errors.push_at(
                e.span(),
                format!("`{attr}` goes on an `async fn` returning `Result<T, E>`"),
            );
            return None;
        }
    };
    let sig = &fun.sig;
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token,
            format!("`{attr}` functions must be `async`; add `async` before `fn`"),
        );
    }
    if let Some(t) = &sig.constness {
        errors.push(t, format!("`{attr}` functions cannot be `const`"));
    }
    if let Some(t) = &sig.unsafety {
        errors.push(
            t,
            format!(
                "`{attr}` functions cannot be `unsafe`; call the unsafe code from a safe function"
            ),
        );
    }
    if let Some(abi) = &sig.abi {
        errors.push(
            abi,
            format!("`{attr}` functions cannot have an `extern` ABI"),
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push(v, format!("`{attr}` functions cannot be variadic"));
    }
    let typed_generics: Vec<&GenericParam> = sig
        .generics
        .params
        .iter()
        .filter(|p| !matches!(p, GenericParam::Lifetime(_)))
        .collect();
    if !typed_generics.is_empty() {
        errors.push(
            &sig.generics,
            format!("`{attr}` functions cannot be generic: records and the compensation catalog need concrete types; give each argument and the output a concrete type"),
        );
    }
    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.push(
                r,
                format!("`{attr}` cannot annotate a method: move the body into a free function and pass what it needs from `self` as arguments"),
            ),
            FnArg::Typed(t) => {
                if let Type::ImplTrait(_) = &*t.ty {
                    errors.push(&t.ty, format!("`{attr}` functions cannot take `impl Trait` arguments (they are generic); use a concrete type"));
                }
                match &*t.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => params.push(Param {
                        ident: p.ident.clone(),
                        mutability: p.mutability,
                        ty: (*t.ty).clone(),
                    }),
                    other => errors.push(
                        other,
                        format!("`{attr}` needs a plain name for each argument, as in `order: Order`; destructure it inside the body"),
                    ),
                }
            }
        }
    }
    if params.len() > 16 {
        errors.push(
            &sig.inputs,
            format!("`{attr}` functions take at most 16 arguments; group them in a struct"),
        );
    }
    let is_method = sig.receiver().is_some();
    let mut written_result = false;
    let (ret, output, error) = match &sig.output {
        ReturnType::Default => {
            errors.push(
                &sig.ident,
                format!("`{attr}` functions must return `Result<T, E>`; add a return type such as `-> Result<(), MyError>`"),
            );
            let unit: Type = syn::parse_quote!(());
            (unit, quote!(()), quote!(()))
        }
        ReturnType::Type(_, ty) => {
            let (output, error) = match result_args(ty) {
                Some((t, e)) => {
                    written_result = true;
                    (t.to_token_stream(), e.to_token_stream())
                }
                None => {
                    // Spanned at the return type, so a return type that is not a
                    // `Result` is reported there, once.
                    let span = ty.span();
                    (
                        quote_spanned!(span=> <#ty as ::tempox::__private::ResultType>::Ok),
                        quote_spanned!(span=> <#ty as ::tempox::__private::ResultType>::Err),
                    )
                }
            };
            ((**ty).clone(), output, error)
        }
    };
    Some(Item {
        fun,
        params,
        ret,
        output,
        error,
        written_result,
        is_method,
    })
}

/// `T` and `E` when the type is written `Result<T, E>` (any path ending so).
fn result_args(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(t), Some(e), None) => Some((t, e)),
        _ => None,
    }
}

/// `T` for an argument of type `&T` or `&mut T`, else the type itself: the type a
/// trait bound about the argument's value should name.
pub(crate) fn strip_ref(ty: &Type) -> &Type {
    match ty {
        Type::Reference(r) => strip_ref(&r.elem),
        Type::Paren(p) => strip_ref(&p.elem),
        Type::Group(g) => strip_ref(&g.elem),
        other => other,
    }
}

/// Whether `ty` mentions a lifetime or a reference anywhere (such a type cannot
/// appear in a generated impl without naming the lifetime).
pub(crate) fn borrows(ty: &Type) -> bool {
    fn walk(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Punct(p) => p.as_char() == '&' || p.as_char() == '\'',
            proc_macro2::TokenTree::Group(g) => walk(g.stream()),
            proc_macro2::TokenTree::Ident(i) => i == "impl" || i == "dyn",
            proc_macro2::TokenTree::Literal(_) => false,
        })
    }
    walk(ty.to_token_stream())
}
