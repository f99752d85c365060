//! An argument given twice is an error at the second one, never a silent
//! overwrite.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = id, key = id)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
