//! Unknown, duplicate and ill-typed arguments in one attribute are all
//! reported in one pass, each at its own tokens.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = id, colour = "blue", key = id, lease = "soon", retry = -1)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
