//! An unknown argument is an error at its name, with a suggestion when one is
//! near, and the list of supported arguments.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(kye = id)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

#[idempotent(timeout = "5s")]
async fn release(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
    let _ = release(1);
}
