//! A workflow argument must be decodable from the record: `DeserializeOwned`.
use serde::Serialize;
use tempox::workflow;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, Clone, Serialize)]
struct Order {
    id: String,
}

#[workflow(key = order.id)]
async fn checkout(order: Order) -> Result<String, ShopError> {
    Ok(order.id)
}

fn main() {
    let _ = checkout(Order { id: "o".into() });
}
