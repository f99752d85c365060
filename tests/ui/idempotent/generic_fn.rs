//! A generic function is rejected at its generics: records need concrete types.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent]
async fn reserve<T: serde::Serialize + Send>(item: T) -> Result<(), ShopError> {
    let _ = item;
    Ok(())
}

fn main() {
    let _ = reserve(1_u64);
}
