//! The attribute macros of [tempox](https://docs.rs/tempox). Use them through the
//! `tempox` crate (`tempox::idempotent`, ...), which documents them in full.
//!
//! Set `TEMPOX_MACROS_DEBUG=1` while building to print every expansion.

mod args;
mod errors;
mod item;
mod operation;

use proc_macro::TokenStream;

use args::Kind;

/// Makes an `async fn` idempotent by key. See `tempox::idempotent`.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    operation::operation(attr.into(), item.into(), Kind::Idempotent).into()
}

/// Records a non-idempotent `async fn` and names its compensation. See
/// `tempox::non_idempotent`.
#[proc_macro_attribute]
pub fn non_idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    operation::operation(attr.into(), item.into(), Kind::NonIdempotent).into()
}

/// Makes an `async fn` a workflow whose annotated calls are checkpointed steps.
/// See `tempox::workflow`.
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    operation::operation(attr.into(), item.into(), Kind::Workflow).into()
}
