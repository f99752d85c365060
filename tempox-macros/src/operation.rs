//! `#[idempotent]` and `#[non_idempotent]`: one engine, parameterised by [`Kind`].

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, TokenStreamExt, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::args::{Args, Compensate, Kind, parse_args};
use crate::errors::Errors;
use crate::item::{Item, borrows, parse_item, strip_ref};

/// Parse → check → expand. On any error the user's function is still emitted
/// unchanged, with its companion struct, so callers see no second error.
pub(crate) fn operation(attr: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    let output = expand(attr, item, kind);
    // `TEMPOX_MACROS_DEBUG=1` prints every expansion (while a build runs).
    if std::env::var_os("TEMPOX_MACROS_DEBUG").is_some() {
        eprintln!("{output}");
    }
    output
}

fn expand(attr: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(attr, kind, &mut errors);
    let mut signature_errors = Errors::default();
    let parsed = parse_item(item.clone(), kind, &mut signature_errors);
    if let (Kind::Workflow, Some(parsed)) = (kind, &parsed) {
        check_workflow_arguments(parsed, &mut signature_errors);
    }
    let signature_ok = signature_errors.is_empty();
    errors.append(signature_errors);
    let Some(parsed) = parsed else {
        let errors = errors.into_compile_errors();
        return quote!(#item #errors);
    };
    check_operation(&args, kind, &mut errors);
    if !signature_ok {
        let errors = errors.into_compile_errors();
        let fallback = expand_fallback(&parsed, kind);
        return quote!(#fallback #errors);
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

/// A crashed workflow is resumed from its record: each argument is decoded from
/// it, so none may borrow.
fn check_workflow_arguments(item: &Item, errors: &mut Errors) {
    for p in &item.params {
        if let syn::Type::Reference(r) = &p.ty {
            let owned = r.elem.to_token_stream();
            errors.push(
                &p.ty,
                format!(
                    "`#[workflow]` arguments must be owned: a crashed workflow is resumed from its record, which cannot hold a borrow; take `{owned}` instead"
                ),
            );
        }
    }
}

/// `::tempox::__private`, spanned at `span` so that a bound of a helper it
/// names is reported at the user's tokens, and nowhere else.
fn private_at(span: Span) -> TokenStream {
    quote_spanned!(span=> ::tempox::__private)
}

/// The hidden struct sharing the function's name (types and values are separate
/// namespaces), which carries the operation's identity at the type level, and
/// its name. It has the function's visibility, so `compensate = path::to::f`
/// works wherever `f` is visible, and no type of the signature: a `pub`
/// function may take or return private types.
///
/// Spanned at the function's name, so that rustc's "the trait is not implemented
/// for `refund`" points at `fn refund`.
fn companion_struct(item: &Item, name: &TokenStream) -> TokenStream {
    let ident = &item.fun.sig.ident;
    let vis = &item.fun.vis;
    let cfgs = cfg_attrs(item);
    let span = generated_at(ident.span());
    let mut companion = ident.clone();
    companion.set_span(span);
    let private = private_at(span);
    quote_spanned! {span=>
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(
            non_camel_case_types,
            missing_docs,
            missing_debug_implementations,
            unreachable_pub
        )]
        #vis struct #companion {}
        #(#cfgs)*
        #[automatically_derived]
        impl #private::Companion for #companion {
            const NAME: &'static str = #name;
        }
    }
}

/// A span in the macro's own expansion, shown at `at`.
///
/// `dead_code` is not reported for such items (rustc skips lints in external
/// macros), which is why the generated structs need no `#[allow(dead_code)]`:
/// that allow would make them roots of the dead-code analysis, and through the
/// `Compensates` impl keep the user's function alive, hiding "function is never
/// used". Diagnostics about them still point at `at`.
fn generated_at(at: Span) -> Span {
    Span::call_site().located_at(at)
}

/// The private struct that implements `Operation`: its associated types are the
/// signature's, which may be less visible than the function.
fn operation_struct(item: &Item) -> (syn::Ident, TokenStream) {
    let ident = &item.fun.sig.ident;
    let op = format_ident!(
        "__tempox_op_{}",
        ident.unraw(),
        span = generated_at(ident.span())
    );
    let cfgs = cfg_attrs(item);
    let tokens = quote! {
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, missing_debug_implementations)]
        struct #op {}
    };
    (op, tokens)
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

/// The operation's name: `name = ".."`, else the module path and function name.
fn operation_name(args: Option<&Args>, item: &Item) -> TokenStream {
    match args.and_then(|a| a.name.as_ref()) {
        Some(n) => n.value.to_token_stream(),
        None => {
            let fn_name = item.fun.sig.ident.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    }
}

// Input: a function whose signature was rejected (the errors are emitted with it).
// Output:
//     fn reserve(..) { .. }                                    // exactly as written
//     #[doc(hidden)] pub struct reserve {}
//     impl Companion for reserve { NAME }
//     const _: () = {
//         impl IdempotentOperation for reserve {}               // idempotent only
//         impl<O> Compensates<O> for reserve { .. }
//     };
// Callers and `compensate = reserve` elsewhere then raise no second error: the
// one that matters is the signature's.
fn expand_fallback(item: &Item, kind: Kind) -> TokenStream {
    let fun = &item.fun;
    if item.is_method {
        // A struct cannot sit in an `impl` block; the method is reported.
        return fun.to_token_stream();
    }
    let private = private_at(Span::call_site());
    let ident = &fun.sig.ident;
    let cfgs = cfg_attrs(item);
    let companion = companion_struct(item, &operation_name(None, item));
    let idempotent_marker = (kind == Kind::Idempotent)
        .then(|| quote!(#[automatically_derived] impl #private::IdempotentOperation for #ident {}));
    quote! {
        #fun
        #companion
        #(#cfgs)*
        const _: () = {
            #idempotent_marker
            #[automatically_derived]
            #[diagnostic::do_not_recommend]
            impl<O> #private::Compensates<O> for #ident {
                fn compensate(
                    _: O,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<(), ::std::string::String>> + 'static {
                    ::core::future::ready(::core::result::Result::Ok(()))
                }
            }
        };
    }
}

fn kind_tokens(kind: Kind) -> TokenStream {
    match kind {
        Kind::Idempotent => quote!(::tempox::__private::Kind::Idempotent),
        Kind::NonIdempotent => quote!(::tempox::__private::Kind::NonIdempotent),
        Kind::Workflow => quote!(::tempox::__private::Kind::Workflow),
    }
}

// Input:
//     #[idempotent(key = order.id)]
//     pub async fn reserve(order: &Order) -> Result<Reservation, ShopError> { body }
// Output:
//     #[doc(hidden)] pub struct reserve {}                     // the companion
//     impl Companion for reserve { NAME }
//     #[doc(hidden)] struct __tempox_op_reserve {}             // private
//     const _: () = {
//         impl Operation for __tempox_op_reserve { NAME, KIND, OPTIONS, Output, Error, .. }
//         impl IdempotentOperation for reserve {}              // idempotent only
//         impl<O: Borrow<Order>> Compensates<O> for reserve {}  // one argument only
//         type __tempox_compensation = refund;                 // `compensate = refund`
//         fn __tempox_compensate(output: Vec<u8>) -> BoxFuture<..> { .. }
//         #[distributed_slice(OPERATIONS)] static ENTRY: OperationEntry = ..;
//     };
//     pub async fn reserve(order: &Order) -> Result<Reservation, ShopError> {
//         let call = prepare::<__tempox_op_reserve, _>(Some(key_of(&order.id)), &(argument(&order),));
//         let guard = match begin::<__tempox_op_reserve>(call).await {
//             Begin::Done(result) => return result,
//             Begin::Run(guard) => guard,
//             Begin::Probe(guard) => /* probe, then */ guard,
//         };
//         guard.run(async move { body }).await
//     }
// A return type not written `Result<T, E>` (an alias) goes through `ResultType`
// on the way in and out.
fn expand_operation(args: &Args, item: &Item, kind: Kind) -> TokenStream {
    let private = private_at(Span::call_site());
    let fun = &item.fun;
    let attrs = &fun.attrs;
    let vis = &fun.vis;
    let block = &fun.block;
    let ident = &fun.sig.ident;
    let ret = &item.ret;
    let ret_span = ret.span();
    let cfgs = cfg_attrs(item);
    let name = operation_name(Some(args), item);
    let companion = companion_struct(item, &name);
    let (op, op_struct) = operation_struct(item);

    let kind_tokens = kind_tokens(kind);
    let keying = match (&args.key, kind) {
        (Some(_), _) => quote!(Explicit),
        (None, Kind::Idempotent | Kind::Workflow) => quote!(Arguments),
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
    let output_span = span_of_tokens(output_ty, ret_span);
    let error_span = span_of_tokens(error_ty, ret_span);
    let output_assoc = quote_spanned!(output_span=> type Output = #output_ty;);
    let error_assoc = quote_spanned!(error_span=> type Error = #error_ty;);
    let error_codec = match &args.cache_errors {
        Some(a) if a.value => {
            // The codec's type is inferred from `Self::Error`, so an error type
            // that cannot be cached is reported at `cache_errors`.
            let span = a.name.span();
            let private = private_at(span);
            quote_spanned! {span=>
                const ERROR_CODEC: ::core::option::Option<#private::ErrorCodec<Self::Error>> =
                    ::core::option::Option::Some(#private::error_codec());
            }
        }
        _ => TokenStream::new(),
    };

    // Spanned at `E`: when the return type is no `Result`, `Self::Error` is
    // reported there, with the same error as `type Error`.
    let classify = quote_spanned! {error_span=>
        fn classify(error: &Self::Error) -> (bool, bool) {
            #[allow(unused_imports)]
            use #private::{ClassifyByDefault as _, ClassifyByTrait as _};
            (&#private::Classify(error)).__tempox_classify()
        }
    };

    let idempotent_marker = (kind == Kind::Idempotent)
        .then(|| quote!(#[automatically_derived] impl #private::IdempotentOperation for #ident {}));
    let compensates = (kind != Kind::Workflow)
        .then(|| compensates_impl(item, kind, &op))
        .flatten();

    let compensate_fn = format_ident!("__tempox_compensate", span = Span::mixed_site());
    let (compensation, compensation_fn) = match args.compensate.as_ref().map(|a| &a.value) {
        // A workflow is undone by rolling back its own steps.
        _ if kind == Kind::Workflow => {
            (quote!(#private::Compensation::Rollback), TokenStream::new())
        }
        Some(Compensate::Noop) => (quote!(#private::Compensation::Noop), TokenStream::new()),
        None => (quote!(#private::Compensation::None), TokenStream::new()),
        Some(Compensate::Call(path)) => {
            // The path is named once, in an alias: a path that is no
            // `#[idempotent]` operation at all is then one error, not one per use.
            // Every check is spanned at the path.
            let span = path.span();
            let at = private_at(span);
            let target = format_ident!("__tempox_compensation", span = span);
            let output = format_ident!("__tempox_output", span = Span::mixed_site());
            // The boxing too: its coercion re-checks the bound, at the same span.
            let boxed = quote_spanned! {span=>
                ::std::boxed::Box::pin(#at::call_compensation::<#target, #output_ty>(#output))
            };
            (
                quote_spanned! {span=>
                    #private::Compensation::Call {
                        name: #at::idempotent_compensation::<#target>(),
                        run: #compensate_fn,
                    }
                },
                quote! {
                    #[allow(non_camel_case_types)]
                    type #target = #path;
                    fn #compensate_fn(
                        #output: ::std::vec::Vec<u8>,
                    ) -> #private::BoxFuture<'static, ::core::result::Result<(), ::std::string::String>> {
                        #boxed
                    }
                },
            )
        }
    };
    let entry = format_ident!("__TEMPOX_OPERATION", span = Span::mixed_site());
    let workflow_items = (kind == Kind::Workflow).then(|| workflow_items(args, item, &op));
    let (probe_entry, probe_fn) = match &args.probe {
        Some(probe) => probe_dispatch(&probe.value, item, &op),
        None => (quote!(::core::option::Option::None), TokenStream::new()),
    };

    let operation_impl = quote! {
        #(#cfgs)*
        const _: () = {
            #[automatically_derived]
            impl #private::Operation for #op {
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
                #classify
            }
            #idempotent_marker
            #compensates
            #compensation_fn
            #workflow_items
            #probe_fn
            #[#private::linkme::distributed_slice(#private::OPERATIONS)]
            #[linkme(crate = #private::linkme)]
            static #entry: #private::OperationEntry = #private::OperationEntry {
                name: <#op as #private::Operation>::NAME,
                kind: #kind_tokens,
                compensation: #compensation,
                probe: #probe_entry,
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
            let at = private_at(span);
            // Without parentheses where precedence allows: rustc then reports a
            // key that is not `Serialize` across the whole expression.
            let borrowed = match expr {
                syn::Expr::Path(_)
                | syn::Expr::Field(_)
                | syn::Expr::MethodCall(_)
                | syn::Expr::Call(_)
                | syn::Expr::Index(_)
                | syn::Expr::Lit(_)
                | syn::Expr::Macro(_)
                | syn::Expr::Paren(_)
                | syn::Expr::Tuple(_) => quote_spanned!(span=> &#expr),
                _ => quote_spanned!(span=> &(#expr)),
            };
            quote_spanned!(span=> ::core::option::Option::Some(#at::key_of(#borrowed)))
        }
        None => quote!(::core::option::Option::None),
    };
    let arguments = item.params.iter().map(|p| {
        // `&` at the type's first token and the name at its last: rustc reports a
        // type that is not `Serialize` at the type, not across `order: &Order`.
        let (first, last) = first_and_last_span(&p.ty);
        let at = private_at(first);
        let mut name = p.ident.clone();
        name.set_span(last);
        quote_spanned!(first=> #at::argument(&#name))
    });
    let retrying = args.retry.is_some() && kind == Kind::Idempotent;
    // When only the type checker can tell whether the return type is a `Result`,
    // the wrapper's own tokens are spanned at it: if it is not, every use of
    // `Output` and `Error` fails there with the same error, which rustc reports
    // once.
    let wrapper_span = if item.written_result {
        Span::call_site()
    } else {
        ret_span
    };
    // (At the return type these locals take its hygiene too: a mixed-site
    // binding would make rustc report the same error a second time "in this
    // attribute macro expansion". Their `__tempox_` names keep them apart.)
    let hygienic = if item.written_result {
        Span::mixed_site()
    } else {
        ret_span
    };
    let guard = format_ident!("__tempox_guard", span = hygienic);
    let call = format_ident!("__tempox_call", span = hygienic);
    let result = format_ident!("__tempox_result", span = hygienic);
    // `Result<T, E>` as written is returned as is; anything else goes through
    // `ResultType`, which reports a return type that is not a `Result` once.
    let from_result = |tokens: TokenStream| {
        if item.written_result {
            tokens
        } else {
            let at = private_at(ret_span);
            quote_spanned!(ret_span=> <#ret as #at::ResultType>::from_result(#tokens))
        }
    };
    let probe_arm = match &args.probe {
        Some(probe) => {
            let probe = &probe.value;
            // Spanned at the probe's path: a probe that does not fit is
            // reported there.
            let span = probe.span();
            let refs = item.params.iter().map(|p| {
                let name = &p.ident;
                quote_spanned!(span=> &#name)
            });
            let early = from_result(quote!(#result));
            let at = private_at(span);
            let probed = quote_spanned! {span=>
                #guard.probed(#at::probe_answer::<
                    <#op as #at::Operation>::Output,
                    <#op as #at::Operation>::Error,
                    _,
                >(#probe(#(#refs),*).await)).await
            };
            quote! {
                match #probed {
                    ::core::result::Result::Ok(#guard) => #guard,
                    ::core::result::Result::Err(#result) => return #early,
                }
            }
        }
        None => quote!(#guard),
    };
    let fake_return = format_ident!("__tempox_fake_return", span = Span::mixed_site());
    // rustc reports a block of one expression as the last expression of
    // another as `unused_braces` (`{ Ok(id) }`), unless its braces come from
    // a macro: such a body goes in with braces of the expansion. Its items
    // and bindings stay in its own block, and a body with no last expression
    // keeps its own braces, where a type error is then reported (`{}`).
    let body_tokens = if matches!(block.stmts.last(), Some(syn::Stmt::Expr(_, None))) {
        let mut braced = TokenStream::new();
        syn::token::Brace(Span::mixed_site())
            .surround(&mut braced, |tokens| tokens.append_all(&block.stmts));
        braced
    } else {
        quote!(#block)
    };
    let typed_block = quote! {
        async move {
            // Gives the block its type up front, so `?` and `return` inside it infer
            // as in the original function and type errors stay in the body.
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
            if false {
                let #fake_return: #ret = loop {};
                return #fake_return;
            }
            #body_tokens
        }
    };
    let body = if item.written_result {
        typed_block
    } else {
        let at = private_at(ret_span);
        quote_spanned! {ret_span=>
            async move { <#ret as #at::ResultType>::into_result(#typed_block.await) }
        }
    };
    let run = if kind == Kind::Workflow {
        quote_spanned!(wrapper_span=> #guard.run_workflow(#body).await)
    } else if retrying {
        let clones = item.params.iter().map(|p| {
            let name = &p.ident;
            let mutability = &p.mutability;
            let span = p.ty.span();
            let at = private_at(span);
            let mut source = name.clone();
            source.set_span(span);
            // Used by the key and the fingerprint even when the body ignores it.
            quote_spanned! {span=>
                #[allow(unused_variables)]
                let #mutability #name = #at::retry_clone(&#source);
            }
        });
        quote_spanned!(wrapper_span=> #guard.run_retrying(move || { #(#clones)* #body }).await)
    } else {
        quote_spanned!(wrapper_span=> #guard.run(#body).await)
    };
    let done = from_result(quote!(#result));
    let finish = from_result(run);

    // With `retry`, each run binds its own copy (`let mut order = ..` above);
    // the arguments themselves are only borrowed, so they lose a `mut` that
    // would otherwise be reported as unused.
    let mut sig = fun.sig.clone();
    if retrying {
        for input in &mut sig.inputs {
            if let syn::FnArg::Typed(t) = input
                && let syn::Pat::Ident(p) = &mut *t.pat
            {
                p.mutability = None;
            }
        }
    }

    // The braces of the body are the user's (their span, from the original
    // block): with the macro's, the function would count as macro-generated
    // and rustc would not report it as dead code.
    let at = private_at(wrapper_span);
    let wrapper_body = quote_spanned! {wrapper_span=>
        let #call = #at::prepare::<#op, _>(#key, &(#(#arguments,)*));
        let #guard = match #at::begin::<#op>(#call).await {
            #at::Begin::Done(#result) => return #done,
            #at::Begin::Run(#guard) => #guard,
            #at::Begin::Probe(#guard) => #probe_arm,
        };
        #finish
    };
    let mut wrapper_block = TokenStream::new();
    fun.block
        .brace_token
        .surround(&mut wrapper_block, |tokens| tokens.extend(wrapper_body));
    quote! {
        #companion
        #op_struct
        #operation_impl
        #(#attrs)*
        #vis #sig #wrapper_block
    }
}

/// The type an argument is restored as from the record: `&T` as `T`, `&str`
/// as `String`, `&[T]` as `Vec<T>`.
fn restored_type(ty: &syn::Type) -> TokenStream {
    match ty {
        syn::Type::Reference(r) => match &*r.elem {
            syn::Type::Path(p) if p.path.is_ident("str") => quote!(::std::string::String),
            syn::Type::Slice(s) => {
                let elem = &s.elem;
                quote!(::std::vec::Vec<#elem>)
            }
            other => other.to_token_stream(),
        },
        other => other.to_token_stream(),
    }
}

// Input: `probe = find_charge` on `charge(order: &Order, cents: u64)`.
// Output (inside the operation's `const _` block):
//     fn __tempox_probe(input: Vec<u8>) -> BoxFuture<Result<Option<Vec<u8>>, String>> {
//         let mut input = workflow_input(&input)?;
//         let (a, b) = (input.restore::<Order>()?, input.restore::<u64>()?);
//         probe_found(probe_answer(find_charge(&a, &b).await))
//     }
// so the reconciler can settle a crashed call from its record alone.
fn probe_dispatch(probe: &syn::Path, item: &Item, op: &syn::Ident) -> (TokenStream, TokenStream) {
    let private = private_at(Span::call_site());
    let probe_fn = format_ident!("__tempox_probe", span = Span::mixed_site());
    let input = format_ident!("__tempox_input", span = Span::mixed_site());
    let names: Vec<_> = (0..item.params.len())
        .map(|i| format_ident!("__tempox_arg{}", i, span = Span::mixed_site()))
        .collect();
    let restored = item.params.iter().zip(&names).map(|(p, name)| {
        let ty = restored_type(&p.ty);
        let span = p.ty.span();
        quote_spanned!(span=> let #name = #input.restore::<#ty>()?;)
    });
    let span = probe.span();
    let at = private_at(span);
    let call = quote_spanned! {span=>
        #at::probe_found::<<#op as #at::Operation>::Output, <#op as #at::Operation>::Error>(
            #at::probe_answer::<
                <#op as #at::Operation>::Output,
                <#op as #at::Operation>::Error,
                _,
            >(#probe(#(&#names),*).await)
        )
    };
    (
        quote!(::core::option::Option::Some(#probe_fn)),
        quote! {
            fn #probe_fn(
                #input: ::std::vec::Vec<u8>,
            ) -> #private::BoxFuture<'static, ::core::result::Result<::core::option::Option<::std::vec::Vec<u8>>, ::std::string::String>> {
                ::std::boxed::Box::pin(async move {
                    let mut #input = #private::workflow_input(&#input)?;
                    #(#restored)*
                    #call
                })
            }
        },
    )
}

// Input: a `#[workflow]` and its checked arguments.
// Output (inside the operation's `const _` block):
//     impl Workflow for __tempox_op_checkout { RECOVER, STRICT }
//     fn __tempox_resume(input: Vec<u8>) -> BoxFuture<..> {   // decode, call again
//         let mut input = workflow_input(&input)?;
//         checkout(input.next::<Order>()?).await
//     }
//     #[distributed_slice(WORKFLOWS)] static ENTRY: WorkflowEntry = ..;
fn workflow_items(args: &Args, item: &Item, op: &syn::Ident) -> TokenStream {
    let private = private_at(Span::call_site());
    let ident = &item.fun.sig.ident;
    let recover = match args.recover.as_ref().map(|a| a.value) {
        Some(crate::args::Recover::Rollback) => quote!(Rollback),
        _ => quote!(Resume),
    };
    let strict = !args.rollback_continue.as_ref().is_some_and(|a| a.value);
    let deadline = millis(args.deadline_ms.as_ref().map(|a| a.value));
    let resume = format_ident!("__tempox_resume", span = Span::mixed_site());
    let input = format_ident!("__tempox_input", span = Span::mixed_site());
    let entry = format_ident!("__TEMPOX_WORKFLOW", span = Span::mixed_site());
    // Each argument decoded on its own, with the bound at its type: one that
    // cannot be restored is reported there.
    let decoded = item.params.iter().map(|p| {
        let ty = &p.ty;
        let span = ty.span();
        quote_spanned!(span=> #input.next::<#ty>()?)
    });
    let call = if item.written_result {
        quote!(#private::compensation_result::<#op>(#ident(#(#decoded),*).await))
    } else {
        let ret = &item.ret;
        quote!(#private::compensation_result::<#op>(<#ret as #private::ResultType>::into_result(#ident(#(#decoded),*).await)))
    };
    quote! {
        #[automatically_derived]
        impl #private::Workflow for #op {
            const RECOVER: #private::Recover = #private::Recover::#recover;
            const STRICT: bool = #strict;
            const DEADLINE: ::core::option::Option<::core::time::Duration> = #deadline;
        }
        fn #resume(
            #input: ::std::vec::Vec<u8>,
        ) -> #private::BoxFuture<'static, ::core::result::Result<(), ::std::string::String>> {
            ::std::boxed::Box::pin(async move {
                let mut #input = #private::workflow_input(&#input)?;
                #call
            })
        }
        #[#private::linkme::distributed_slice(#private::WORKFLOWS)]
        #[linkme(crate = #private::linkme)]
        static #entry: #private::WorkflowEntry = #private::WorkflowEntry {
            name: <#op as #private::Operation>::NAME,
            recover: #private::Recover::#recover,
            continue_past_dead_letters: !#strict,
            deadline: #deadline,
            resume: #resume,
        };
    }
}

/// `impl Compensates<O> for f` when `f` takes exactly one argument whose type
/// names no lifetime: such a function can be called as `f(output)`.
fn compensates_impl(item: &Item, kind: Kind, op: &syn::Ident) -> Option<TokenStream> {
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
    // As in the wrapper: a return type that is no `Result` is reported at it, once.
    let as_result = |call: TokenStream| {
        if item.written_result {
            quote!(#private::compensation_result::<#op>(#call))
        } else {
            let ret = &item.ret;
            let span = ret.span();
            let at = private_at(span);
            quote_spanned! {span=>
                #at::compensation_result::<#op>(<#ret as #at::ResultType>::into_result(#call))
            }
        }
    };
    let compensate_ret = quote! {
        impl ::core::future::Future<Output = ::core::result::Result<(), ::std::string::String>> + 'static
    };
    // `do_not_recommend` where rustc's hints would mislead: a non-idempotent
    // operation is never a compensation, and when an output does not borrow as
    // `inner`, rustc should report `f: Compensates<Output>` with its own message,
    // not the `Borrow` bound inside. A by-value compensation stays visible, so a
    // mismatch reads "but `Compensates<String>` is implemented for it".
    let hidden =
        (by_ref || kind != Kind::Idempotent).then(|| quote!(#[diagnostic::do_not_recommend]));
    Some(if by_ref {
        let call = as_result(quote! {
            #ident(::core::borrow::Borrow::<#inner>::borrow(&#output)).await
        });
        quote! {
            #[automatically_derived]
            #hidden
            impl<O> #private::Compensates<O> for #ident
            where
                O: ::core::borrow::Borrow<#inner> + ::core::marker::Send + 'static,
            {
                fn compensate(#output: O) -> #compensate_ret {
                    async move { #call }
                }
            }
        }
    } else {
        let call = as_result(quote!(#ident(#output).await));
        // The header at the argument's type, which rustc then shows as what the
        // compensation takes.
        let span = inner.span();
        let at = private_at(span);
        let mut companion = ident.clone();
        companion.set_span(span);
        let body = quote! {
            fn compensate(#output: #inner) -> #compensate_ret {
                async move { #call }
            }
        };
        quote_spanned! {span=>
            #[automatically_derived]
            #hidden
            impl #at::Compensates<#inner> for #companion { #body }
        }
    })
}

/// The spans of the first and the last token of `tokens`.
fn first_and_last_span(tokens: &impl ToTokens) -> (Span, Span) {
    let mut iter = tokens.to_token_stream().into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

/// The span of the first token of `tokens`, or `fallback`.
fn span_of_tokens(tokens: &TokenStream, fallback: Span) -> Span {
    tokens
        .clone()
        .into_iter()
        .next()
        .map_or(fallback, |t| t.span())
}
