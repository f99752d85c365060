//! `compensate = f` where `f` is a plain `async fn`, not annotated.
//!
//! `compensate = refund` names the companion struct that `#[idempotent]`
//! emits next to `fn refund` (in the type namespace). A plain function has
//! none, so rustc reports the path itself, once: "expected type, found
//! function `refund`". No trait bound can run on a path that does not
//! resolve, so our `on_unimplemented` message cannot show here.
use tempox::non_idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

// A plain `async fn`: tempox knows nothing about it.
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
    let _ = refund(1);
}
