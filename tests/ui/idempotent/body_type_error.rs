//! A type error in the body is reported in the body, at the user's expression,
//! as without the attribute; `?` and `return` infer as in the original function.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    Ok(id.to_string())
}

#[idempotent]
async fn release(id: u64) -> Result<u64, ShopError> {
    if id == 0 {
        return Ok("none");
    }
    Ok(id)
}

#[idempotent]
async fn restock(amount: &str) -> Result<u64, ShopError> {
    let amount: u64 = amount.parse()?;
    Ok(amount)
}

fn main() {
    let _ = reserve(1);
    let _ = release(1);
    let _ = restock("1");
}
