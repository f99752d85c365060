//! A compensation must be `#[idempotent]`: a `#[non_idempotent]` target is
//! reported at the path in the attribute.
use tempox::non_idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

// A second effect, not safe to repeat: it cannot undo `charge`.
#[non_idempotent(compensate = noop)]
async fn refund(charge: u64) -> Result<(), ShopError> {
    let _ = charge;
    Ok(())
}

#[non_idempotent(compensate = refund)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

fn main() {
    let _ = charge(1);
}
