//! `cache_errors` records the error type, so it must be `Serialize` and
//! `DeserializeOwned`; the error points at `cache_errors`.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = id, cache_errors)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
