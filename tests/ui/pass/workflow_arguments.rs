//! Every workflow argument at once, a workflow calling steps by path, and the
//! workflow called like any function.
use serde::{Deserialize, Serialize};
use tempox::workflow;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

mod steps {
    use super::ShopError;

    #[tempox::idempotent]
    pub async fn release(slot: &u32) -> Result<(), ShopError> {
        let _ = slot;
        Ok(())
    }

    #[tempox::idempotent(compensate = release)]
    pub async fn hold(slot: u32) -> Result<u32, ShopError> {
        Ok(slot)
    }
}

/// Docs are kept.
#[workflow(
    key = order.id,
    name = "pass.checkout",
    recover = rollback,
    rollback = continue,
    in_flight = reject,
    retention = "7d",
    lease = "1m"
)]
pub async fn checkout(order: Order, slots: Vec<u32>) -> Result<u32, ShopError> {
    let mut total = 0;
    for slot in slots {
        total += steps::hold(slot).await?;
    }
    let _ = order;
    Ok(total)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    id: String,
}

#[workflow]
async fn defaults(a: u64, b: String) -> Result<String, ShopError> {
    Ok(format!("{a}{b}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rt = tempox::Runtime::builder()
        .store(tempox::store::MemoryStore::new())
        .build()
        .unwrap();
    let out = rt
        .scope(checkout(Order { id: "o-1".into() }, vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(out, 6);
    let steps = rt
        .steps(&tempox::RecordId::parse("pass.checkout/o-1").unwrap())
        .await
        .unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(rt.scope(defaults(1, "x".into())).await.unwrap(), "1x");
}
