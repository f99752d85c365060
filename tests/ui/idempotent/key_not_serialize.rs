//! A key must be `Serialize`; the error points at the key expression.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, serde::Serialize)]
struct Order {
    #[serde(skip)]
    id: OrderId,
    cents: u64,
}

#[derive(Debug)]
struct OrderId(u64);

#[idempotent(key = order.id)]
async fn reserve(order: &Order) -> Result<u64, ShopError> {
    Ok(order.cents + order.id.0)
}

fn main() {
    let _ = reserve(&Order {
        id: OrderId(1),
        cents: 2,
    });
}
