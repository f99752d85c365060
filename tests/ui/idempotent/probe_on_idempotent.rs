//! `probe` belongs to `#[non_idempotent]`.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

async fn find_reservation(id: &u64) -> Result<Option<u64>, ShopError> {
    Ok(Some(*id))
}

#[idempotent(key = id, probe = find_reservation)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
