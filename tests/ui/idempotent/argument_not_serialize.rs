//! Every argument is recorded and fingerprinted, so it must be `Serialize`;
//! the error points at the argument's type.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug)]
struct Order {
    id: u64,
}

#[idempotent]
async fn reserve(order: &Order, note: String) -> Result<u64, ShopError> {
    let _ = note;
    Ok(order.id)
}

fn main() {
    let _ = reserve(&Order { id: 1 }, String::new());
}
