//! `retry` runs the body again with a copy of each argument: owned arguments
//! must be `Clone`; the error points at the argument's type.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, serde::Serialize)]
struct Order {
    id: u64,
}

#[idempotent(retry = 3)]
async fn reserve(order: Order, attempt: u32) -> Result<u64, ShopError> {
    Ok(order.id + u64::from(attempt))
}

fn main() {
    let _ = reserve(Order { id: 1 }, 0);
}
