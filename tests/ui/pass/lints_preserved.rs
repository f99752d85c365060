//! The expansion adds no warning, even with strict lints, and the function keeps
//! its own attributes: its docs, and an `#[allow]` that its body needs.
#![deny(warnings)]
#![deny(
    rust_2018_idioms,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_qualifications,
    unused_lifetimes,
    single_use_lifetimes,
    trivial_casts,
    trivial_numeric_casts,
    unused_import_braces,
    unsafe_code
)]

use tempox::store::MemoryStore;
use tempox::{Runtime, idempotent, non_idempotent};

/// The shop's errors.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// A runtime failure.
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

/// Reserves stock. The `#[allow]` below is needed by the body, so it must be
/// kept on the function.
#[allow(unused_variables)]
#[idempotent(key = id)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    let unused = 1;
    Ok(id)
}

/// Attributes after the macro's are kept too.
#[idempotent(key = order_id, retry = 2, cache_errors = false)]
#[allow(unused_mut)]
#[must_use = "the reservation must be used"]
async fn reserve_retrying(mut order_id: String, note: &str) -> Result<String, ShopError> {
    // `order_id` is mutated: the copy each run makes stays `mut`.
    order_id.push('!');
    let mut unused_mut = 0;
    let _ = (note, unused_mut);
    Ok(order_id)
}

/// An argument the body never reads is used by the key and the fingerprint, so
/// it is not reported as unused.
#[idempotent(key = id, retry = 1)]
async fn reserve_by_key(id: String) -> Result<(), ShopError> {
    Ok(())
}

/// A body of one expression: the expansion adds no `unused_braces` around it.
#[idempotent]
async fn ping() -> Result<(), ShopError> { Ok(()) }

/// The same for a non-idempotent operation, a body that returns a value.
#[non_idempotent(compensate = noop)]
async fn notify(n: u32) -> Result<u32, ShopError> { Ok(n) }

/// And for a workflow.
#[tempox::workflow(key = n)]
async fn flow(n: u32) -> Result<u32, ShopError> { notify(n).await }

macro_rules! ok {
    ($value:expr) => {
        Ok($value)
    };
}

/// A body of one macro call.
#[idempotent]
async fn pong() -> Result<u32, ShopError> { ok!(7) }

/// A `pub` operation: `missing_docs` would report it if this doc were dropped,
/// and nothing public that the expansion adds lacks docs.
#[idempotent(key = sku)]
pub async fn restock(sku: String, count: u32) -> Result<u32, ShopError> {
    let _ = sku;
    Ok(count)
}

/// A `pub(crate)` operation, with a compensation.
#[non_idempotent(compensate = refund)]
pub(crate) async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

/// Undoes `charge`.
#[idempotent]
pub(crate) async fn refund(cents: u64) -> Result<(), ShopError> {
    let _ = cents;
    Ok(())
}

#[tokio::main]
async fn main() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.scope(async {
        assert_eq!(reserve(1).await.ok(), Some(1));
        assert_eq!(
            reserve_retrying("o".to_owned(), "n").await.ok().as_deref(),
            Some("o!")
        );
        assert!(reserve_by_key("k".to_owned()).await.is_ok());
        assert_eq!(charge(3).await.ok(), Some(3));
        assert!(refund(3).await.is_ok());
        assert_eq!(restock("sku".to_owned(), 2).await.ok(), Some(2));
        assert!(ping().await.is_ok());
        assert_eq!(notify(4).await.ok(), Some(4));
        assert_eq!(flow(5).await.ok(), Some(5));
        assert_eq!(pong().await.ok(), Some(7));
    })
    .await;
}
