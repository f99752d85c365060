//! A compensation must take the output, by value or by reference; one taking
//! another type is reported at the path in the attribute.
use tempox::{idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent]
async fn refund(charge_id: String) -> Result<(), ShopError> {
    let _ = charge_id;
    Ok(())
}

#[idempotent]
async fn refund_by_ref(charge_id: &String) -> Result<(), ShopError> {
    let _ = charge_id;
    Ok(())
}

// Returns a `u64`, but `refund` takes a `String`.
#[non_idempotent(compensate = refund)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

// By reference: `refund_by_ref` takes `&String`, not `&u64`.
#[non_idempotent(compensate = refund_by_ref)]
async fn charge_again(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

fn main() {
    let _ = charge(1);
    let _ = charge_again(1);
}
