//! A function whose signature is rejected is still emitted as written, with its
//! companion: `compensate = release` elsewhere raises nothing more.
use tempox::{idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent]
fn release(stock: u64) -> Result<(), ShopError> {
    let _ = stock;
    Ok(())
}

#[non_idempotent(compensate = release)]
async fn reserve(stock: u64) -> Result<u64, ShopError> {
    Ok(stock)
}

fn main() {
    let _ = reserve(1);
    let _ = release(1);
}
