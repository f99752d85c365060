//! One mistake, one error: the function with a bad argument is still emitted
//! whole, so its callers and the operation it compensates raise nothing more.
use tempox::{idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = charge_id, colour = "blue")]
async fn refund(charge_id: u64) -> Result<(), ShopError> {
    let _ = charge_id;
    Ok(())
}

#[non_idempotent(compensate = refund)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

#[tokio::main]
async fn main() {
    let rt = tempox::Runtime::builder()
        .store(tempox::store::MemoryStore::new())
        .build()
        .unwrap();
    let charged: Result<u64, ShopError> = rt.scope(charge(5)).await;
    let refunded: Result<(), ShopError> = rt.scope(refund(charged.unwrap())).await;
    refunded.unwrap();
}
