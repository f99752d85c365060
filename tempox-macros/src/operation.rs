//! `#[idempotent]` and `#[non_idempotent]`: one engine, parameterised by [`Kind`].

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::args::{Args, Compensate, Kind, parse_args};
use crate::errors::Errors;
use crate::item::{Item, borrows, parse_item, strip_ref};

/// Parse → check → expand. On any error the user's function is still emitted
/// unchanged, with its companion struct, so callers see no second error.
pub(crate) fn operation(attr: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(attr, kind, &mut errors);
    let Some(parsed) = parse_item(item.clone(), kind, &mut errors) else {
        let errors = errors.into_compile_errors();
        return quote!(#item #errors);
    };
    let signature_ok = errors.is_empty();
    check_operation(&args, kind, &mut errors);
    if !signature_ok {
        let errors = errors.into_compile_errors();
        let fun = &parsed.fun;
        let companion = companion_struct(&parsed);
        return quote!(#fun #companion #errors);
    }
    // Argument mistakes are reported, but the expansion goes on with what was
    // valid: the function keeps working for its callers and for `compensate`.
    let expanded = expand_operation(&args, &parsed, kind);
    let errors = errors.into_compile_errors();
    quote!(#expanded #errors)
}

/// Rules between arguments (each argument alone was checked while parsing).
fn check_operation(args: &Args, kind: Kind, errors: &mut Errors) {
    if kind == Kind::NonIdempotent && args.compensate.is_none() {
        errors.push_at(
            Span::call_site(),
            "`#[non_idempotent]` needs `compensate = <fn>`: the `#[idempotent]` function that undoes this effect when a workflow rolls back; write `compensate = noop` if nothing can undo it",
        );
    }
}

/// The hidden struct sharing the function's name (types and values are separate
/// namespaces), which carries the operation's identity at the type level.
fn companion_struct(item: &Item) -> TokenStream {
    let ident = &item.fun.sig.ident;
    let vis = &item.fun.vis;
    let cfgs = cfg_attrs(item);
    quote! {
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {}
    }
}

fn cfg_attrs(item: &Item) -> Vec<&syn::Attribute> {
    item.fun
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect()
}

fn millis(ms: Option<u64>) -> TokenStream {
    match ms {
        Some(ms) => quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    }
}

// Input:
//     #[idempotent(key = order.id)]
//     pub async fn reserve(order: &Order) -> Result<Reservation, ShopError> { body }
// Output:
//     #[doc(hidden)] pub struct reserve {}
//     const _: () = {
//         impl Operation for reserve { NAME, KIND, OPTIONS, Output, Error, .. }
//         impl IdempotentOperation for reserve {}              // idempotent only
//         impl<O: Borrow<Order>> Compensates<O> for reserve {}  // one argument only
//         #[distributed_slice(OPERATIONS)] static ENTRY: OperationEntry = ..;
//     };
//     pub async fn reserve(order: &Order) -> Result<Reservation, ShopError> {
//         let guard = match begin::<reserve, _>(Some(key_of(&order.id)), &(argument(&order),)).await {
//             Begin::Done(result) => return result,
//             Begin::Run(guard) => guard,
//             Begin::Probe(guard) => /* probe, then */ guard,
//         };
//         guard.run(async move { body }).await
//     }
fn expand_operation(args: &Args, item: &Item, kind: Kind) -> TokenStream {
    let private = quote!(::tempox::__private);
    let fun = &item.fun;
    let attrs = &fun.attrs;
    let vis = &fun.vis;
    let sig = &fun.sig;
    let block = &fun.block;
    let ident = &sig.ident;
    let ret = &item.ret;
    let cfgs = cfg_attrs(item);
    let companion = companion_struct(item);

    let name = match &args.name {
        Some(n) => n.value.to_token_stream(),
        None => {
            let fn_name = ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let kind_tokens = match kind {
        Kind::Idempotent => quote!(#private::Kind::Idempotent),
        Kind::NonIdempotent | Kind::Workflow => quote!(#private::Kind::NonIdempotent),
    };
    let keying = match (&args.key, kind) {
        (Some(_), _) => quote!(Explicit),
        (None, Kind::Idempotent) => quote!(Arguments),
        (None, _) => quote!(Unique),
    };
    let in_flight = if args.in_flight_reject.as_ref().is_some_and(|a| a.value) {
        quote!(Reject)
    } else {
        quote!(Wait)
    };
    let lease = millis(args.lease_ms.as_ref().map(|a| a.value));
    let retention = millis(args.retention_ms.as_ref().map(|a| a.value));
    let retry = match &args.retry {
        Some(r) => {
            let n = r.value;
            quote!(::core::option::Option::Some(#n))
        }
        None => quote!(::core::option::Option::None),
    };
    let cache_errors = args.cache_errors.as_ref().is_some_and(|a| a.value);
    let has_probe = args.probe.is_some();

    let output_ty = &item.output;
    let error_ty = &item.error;
    let output_span = span_of_tokens(output_ty, ret.span());
    let error_span = span_of_tokens(error_ty, ret.span());
    let output_assoc = quote_spanned!(output_span=> type Output = #output_ty;);
    let error_assoc = quote_spanned!(error_span=> type Error = #error_ty;);
    let error_codec = match &args.cache_errors {
        Some(a) if a.value => {
            let span = a.name.span();
            quote_spanned! {span=>
                const ERROR_CODEC: ::core::option::Option<#private::ErrorCodec<#error_ty>> =
                    ::core::option::Option::Some(#private::error_codec::<#error_ty>());
            }
        }
        _ => TokenStream::new(),
    };

    let idempotent_marker = (kind == Kind::Idempotent)
        .then(|| quote!(impl #private::IdempotentOperation for #ident {}));
    let compensates = compensates_impl(item);

    let compensate_fn = format_ident!("__tempox_compensate", span = Span::mixed_site());
    let (compensation, compensation_fn) = match args.compensate.as_ref().map(|a| &a.value) {
        Some(Compensate::Noop) => (quote!(#private::Compensation::Noop), TokenStream::new()),
        None => (quote!(#private::Compensation::None), TokenStream::new()),
        Some(Compensate::Call(path)) => {
            let span = path.span();
            let target = quote_spanned!(span=> <#path as #private::Compensates<#output_ty>>);
            let idempotent_check = quote_spanned!(span=> #private::assert_idempotent::<#path>());
            let name = quote_spanned!(span=> <#path as #private::Operation>::NAME);
            (
                quote!(#private::Compensation::Call { name: #name, run: #compensate_fn }),
                quote! {
                    const _: () = #idempotent_check;
                    fn #compensate_fn(
                        output: ::std::vec::Vec<u8>,
                    ) -> #private::BoxFuture<'static, ::core::result::Result<(), ::std::string::String>> {
                        ::std::boxed::Box::pin(async move {
                            let output = #private::decode_output::<#output_ty>(&output)?;
                            #target::compensate(output).await
                        })
                    }
                },
            )
        }
    };
    let entry = format_ident!("__TEMPOX_OPERATION", span = Span::mixed_site());

    let operation_impl = quote! {
        #(#cfgs)*
        const _: () = {
            #[automatically_derived]
            impl #private::Operation for #ident {
                const NAME: &'static str = #name;
                const KIND: #private::Kind = #kind_tokens;
                const OPTIONS: #private::Options = #private::Options {
                    keying: #private::Keying::#keying,
                    in_flight: #private::InFlight::#in_flight,
                    lease: #lease,
                    retention: #retention,
                    retry: #retry,
                    cache_errors: #cache_errors,
                    probe: #has_probe,
                };
                #output_assoc
                #error_assoc
                #error_codec
                fn classify(error: &Self::Error) -> (bool, bool) {
                    #[allow(unused_imports)]
                    use #private::{ClassifyByDefault as _, ClassifyByTrait as _};
                    (&#private::Classify(error)).__tempox_classify()
                }
            }
            #idempotent_marker
            #compensates
            #compensation_fn
            #[#private::linkme::distributed_slice(#private::OPERATIONS)]
            #[linkme(crate = #private::linkme)]
            static #entry: #private::OperationEntry = #private::OperationEntry {
                name: <#ident as #private::Operation>::NAME,
                kind: #kind_tokens,
                compensation: #compensation,
                location: #private::Location {
                    module: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                },
            };
        };
    };

    let key = match &args.key {
        Some(k) => {
            let expr = &k.value;
            let span = expr.span();
            quote_spanned!(span=> ::core::option::Option::Some(#private::key_of(&(#expr))))
        }
        None => quote!(::core::option::Option::None),
    };
    let arguments = item.params.iter().map(|p| {
        let name = &p.ident;
        let span = p.ty.span();
        quote_spanned!(span=> #private::argument(&#name))
    });
    let guard = format_ident!("__tempox_guard", span = Span::mixed_site());
    let call = format_ident!("__tempox_call", span = Span::mixed_site());
    let result = format_ident!("__tempox_result", span = Span::mixed_site());
    let probe_arm = match &args.probe {
        Some(probe) => {
            let probe = &probe.value;
            let refs = item.params.iter().map(|p| {
                let name = &p.ident;
                quote!(&#name)
            });
            quote! {
                match #guard.probed(#probe(#(#refs),*).await).await {
                    ::core::result::Result::Ok(#guard) => #guard,
                    ::core::result::Result::Err(#result) => return #result,
                }
            }
        }
        None => quote!(#guard),
    };
    let fake_return = format_ident!("__tempox_fake_return", span = Span::mixed_site());
    let body = quote! {
        async move {
            // Gives the block its type up front, so `?` and `return` inside it infer
            // as in the original function and type errors stay in the body.
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
            if false {
                let #fake_return: #ret = loop {};
                return #fake_return;
            }
            #block
        }
    };
    let run = if args.retry.is_some() && kind == Kind::Idempotent {
        let clones = item.params.iter().map(|p| {
            let name = &p.ident;
            let mutability = &p.mutability;
            let span = p.ty.span();
            quote_spanned!(span=> let #mutability #name = #private::retry_clone(&#name);)
        });
        quote!(#guard.run_retrying(move || { #(#clones)* #body }).await)
    } else {
        quote!(#guard.run(#body).await)
    };

    quote! {
        #companion
        #operation_impl
        #(#attrs)*
        #vis #sig {
            let #call = #private::prepare::<#ident, _>(#key, &(#(#arguments,)*));
            let #guard = match #private::begin::<#ident>(#call).await {
                #private::Begin::Done(#result) => return #result,
                #private::Begin::Run(#guard) => #guard,
                #private::Begin::Probe(#guard) => #probe_arm,
            };
            #run
        }
    }
}

/// `impl Compensates<O> for f` when `f` takes exactly one argument whose type
/// names no lifetime: such a function can be called as `f(output)`.
fn compensates_impl(item: &Item) -> Option<TokenStream> {
    let private = quote!(::tempox::__private);
    let [param] = item.params.as_slice() else {
        return None;
    };
    let ident = &item.fun.sig.ident;
    let inner = strip_ref(&param.ty);
    if borrows(inner) {
        return None;
    }
    let by_ref = !std::ptr::eq(inner, &param.ty);
    let output = format_ident!("__tempox_output", span = Span::mixed_site());
    Some(if by_ref {
        quote! {
            impl<O> #private::Compensates<O> for #ident
            where
                O: ::core::borrow::Borrow<#inner> + ::core::marker::Send + 'static,
            {
                fn compensate(
                    #output: O,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<(), ::std::string::String>> + 'static {
                    async move {
                        #private::compensation_result(
                            #ident(::core::borrow::Borrow::<#inner>::borrow(&#output)).await,
                        )
                    }
                }
            }
        }
    } else {
        quote! {
            impl #private::Compensates<#inner> for #ident {
                fn compensate(
                    #output: #inner,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<(), ::std::string::String>> + 'static {
                    async move { #private::compensation_result(#ident(#output).await) }
                }
            }
        }
    })
}

/// The span of the first token of `tokens`, or `fallback`.
fn span_of_tokens(tokens: &TokenStream, fallback: Span) -> Span {
    tokens
        .clone()
        .into_iter()
        .next()
        .map_or(fallback, |t| t.span())
}
