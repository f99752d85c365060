//! A compensation is called as `f(output)`: one taking two arguments is
//! reported at the path in the attribute.
use tempox::{idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent]
async fn refund(charge_id: u64, reason: String) -> Result<(), ShopError> {
    let _ = (charge_id, reason);
    Ok(())
}

#[non_idempotent(compensate = refund)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

fn main() {
    let _ = charge(1);
}
