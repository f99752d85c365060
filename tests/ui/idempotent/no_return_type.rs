//! A function with no return type is rejected: it must return `Result<T, E>`.
use tempox::idempotent;

#[idempotent]
async fn reserve(id: u64) {
    let _ = id;
}

fn main() {
    let _ = reserve(1);
}
