//! `retry` belongs to `#[idempotent]`: a non-idempotent effect is never run
//! again automatically.
use tempox::non_idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[non_idempotent(compensate = noop, retry = 3)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

fn main() {
    let _ = charge(1);
}
