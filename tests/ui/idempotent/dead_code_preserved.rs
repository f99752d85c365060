//! The expansion hides no function from `dead_code`: an annotated function that
//! nothing calls is reported, once, as any function would be; one that is used
//! only as a compensation is used.
#![deny(dead_code)]

use tempox::{idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

// Never called.
#[idempotent(key = id)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

// Never called.
#[non_idempotent(compensate = noop)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

// Only a compensation: that is a use.
#[idempotent]
async fn refund(cents: u64) -> Result<(), ShopError> {
    let _ = cents;
    Ok(())
}

#[non_idempotent(compensate = refund)]
async fn pay(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

fn main() {
    let _ = pay(1);
}
