//! `E` must be `From<tempox::Error>` so runtime failures reach the caller.
//!
//! Two errors, both at `ShopError`: ours, which says what to write, then
//! rustc's own for the `From<tempox::Error>` supertrait of `OperationError`,
//! which the bound `Operation::Error: OperationError` reports by itself.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error("out of stock")]
    OutOfStock,
}

#[idempotent]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    if id == 0 {
        return Err(ShopError::OutOfStock);
    }
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
