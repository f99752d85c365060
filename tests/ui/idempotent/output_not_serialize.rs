//! The output is recorded to be replayed: it must be `Serialize` and
//! `Deserialize` (rustc and serde report each missing trait at the type).
use tempox::idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug)]
struct Reservation {
    id: u64,
}

#[idempotent]
async fn reserve(id: u64) -> Result<Reservation, ShopError> {
    Ok(Reservation { id })
}

fn main() {
    let _ = reserve(1);
}
