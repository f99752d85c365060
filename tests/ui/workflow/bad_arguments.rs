//! Workflow arguments are checked like the others: operation-only arguments,
//! ill-typed values and duplicates are each reported at their tokens.
use tempox::workflow;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[workflow(compensate = noop, recover = rollback, rollback = maybe, recover = restart, retry = 3)]
async fn checkout(id: String) -> Result<String, ShopError> {
    Ok(id)
}

fn main() {
    let _ = checkout("o".into());
}
