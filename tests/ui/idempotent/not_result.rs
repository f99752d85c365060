//! A return type that is not a `Result` is reported once, at the type (only
//! the type checker can tell an alias of `Result` from anything else).
use tempox::idempotent;

#[idempotent]
async fn reserve(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(0)
}

fn main() {
    let _ = reserve(1);
}
