//! Each ill-typed value is reported, at the value, all in one pass.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(
    lease = 5,
    in_flight = maybe,
    retry = "x",
    cache_errors = 3,
    name = foo,
    retention = "7y",
)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
