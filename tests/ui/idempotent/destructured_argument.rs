//! Each argument needs a plain name (it is recorded); a pattern is rejected
//! where it is written.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, serde::Serialize)]
struct Order {
    id: u64,
}

#[idempotent]
async fn reserve(Order { id }: Order, (a, b): (u32, u32)) -> Result<u64, ShopError> {
    Ok(id + u64::from(a + b))
}

fn main() {
    let _ = reserve(Order { id: 1 }, (2, 3));
}
