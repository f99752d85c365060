//! A `deadline` that is not a duration, and durations too long for any
//! store to hold the time they end at.
use serde::{Deserialize, Serialize};
use tempox::workflow;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
}

#[workflow(key = order.id, deadline = "soon")]
async fn checkout(order: Order) -> Result<(), ShopError> {
    let _ = order;
    Ok(())
}

#[workflow(key = order.id, deadline = "40000d", retention = "99999999h")]
async fn archive(order: Order) -> Result<(), ShopError> {
    let _ = order;
    Ok(())
}

fn main() {
    let _ = checkout(Order { id: "o".into() });
    let _ = archive(Order { id: "o".into() });
}
