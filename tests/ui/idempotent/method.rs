//! A method (`self`) is rejected at `self`; nothing is emitted into the `impl`
//! block but the method itself.
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

struct Shop;

impl Shop {
    #[idempotent]
    async fn reserve(&self, id: u64) -> Result<u64, ShopError> {
        Ok(id)
    }
}

fn main() {
    let _ = Shop.reserve(1);
}
