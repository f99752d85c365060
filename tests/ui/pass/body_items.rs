//! Items and `use`s declared in a body stay in the body, as without the
//! attribute: they do not change what the signature's names mean.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use tempox::store::MemoryStore;
use tempox::{Runtime, idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt(u32);

/// A body that declares its own `Receipt` and ends in an expression.
#[idempotent]
async fn receipt(n: u32) -> Result<Receipt, ShopError> {
    #[allow(dead_code)]
    struct Receipt;
    Ok(self::Receipt(n))
}

/// A body that brings another `Result` into scope.
#[non_idempotent(compensate = noop)]
async fn count(n: u32) -> Result<u32, ShopError> {
    #[allow(unused_imports)]
    use std::fmt::Result;
    Ok(n + 1)
}

/// The same on one line, where the braces matter to `unused_braces`.
#[idempotent]
async fn twice(n: u32) -> Result<u32, ShopError> { const TWO: u32 = 2; Ok(n * TWO) }

#[tokio::main]
async fn main() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.scope(async {
        assert_eq!(receipt(3).await.ok(), Some(Receipt(3)));
        assert_eq!(count(3).await.ok(), Some(4));
        assert_eq!(twice(3).await.ok(), Some(6));
    })
    .await;
}
