//! `probe = f` answers `Result<Option<T>, E>`: whether the effect happened.
use tempox::non_idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

async fn find_charge(order_id: &str) -> Result<u64, ShopError> {
    let _ = order_id;
    Ok(1)
}

#[non_idempotent(key = order_id, compensate = noop, probe = find_charge)]
async fn charge(order_id: String) -> Result<u64, ShopError> {
    let _ = order_id;
    Ok(5)
}

fn main() {
    let _ = charge(String::new());
}
