//! A body that is not of the return type (here: none) is reported at its
//! braces, as without the attribute.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent]
async fn nothing() -> Result<(), ShopError> {}

fn main() {}
