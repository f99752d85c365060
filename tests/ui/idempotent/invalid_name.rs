//! An operation name cannot contain `/` (record ids are `name/key`) or
//! whitespace, and cannot be empty.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(name = "shop/reserve")]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

#[idempotent(name = "shop reserve")]
async fn release(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

#[idempotent(name = "")]
async fn restock(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
    let _ = release(1);
    let _ = restock(1);
}
