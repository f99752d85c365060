//! `name` given twice is an error at the second one, whatever comes between.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(name = "shop.reserve", key = id, name = "shop.reserve.v2")]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
