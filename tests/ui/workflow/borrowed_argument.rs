//! A workflow is resumed from its record, so its arguments must be owned.
use serde::{Deserialize, Serialize};
use tempox::workflow;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
}

#[workflow(key = order.id)]
async fn checkout(order: &Order) -> Result<String, ShopError> {
    Ok(order.id.clone())
}

fn main() {
    let order = Order { id: "o".into() };
    let _ = checkout(&order);
}
