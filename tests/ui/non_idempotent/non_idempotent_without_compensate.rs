//! `#[non_idempotent]` needs `compensate = <fn>` (or `compensate = noop`).
use tempox::non_idempotent;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[non_idempotent]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    Ok(cents)
}

#[non_idempotent(key = id, name = "mail.send")]
async fn send_confirmation(id: String) -> Result<(), ShopError> {
    let _ = id;
    Ok(())
}

fn main() {
    let _ = charge(1);
    let _ = send_confirmation(String::new());
}
