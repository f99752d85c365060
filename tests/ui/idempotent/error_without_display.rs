//! An error type without `Display`: one error, at the function's error type,
//! saying what to implement.
use tempox::idempotent;

#[derive(Debug)]
enum ShopError {
    Tempox(tempox::Error),
}

impl From<tempox::Error> for ShopError {
    fn from(e: tempox::Error) -> Self {
        ShopError::Tempox(e)
    }
}

#[idempotent]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id)
}

fn main() {
    let _ = reserve(1);
}
