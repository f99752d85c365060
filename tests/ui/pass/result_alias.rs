//! A `Result` alias as the return type, and a `Result` of the user's own that
//! shadows the prelude's where the expansion lands.
#![allow(clippy::unwrap_used)]

use tempox::store::MemoryStore;
use tempox::{Runtime, idempotent, non_idempotent};

#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MyError {
    #[error("no stock")]
    NoStock,
    #[error(transparent)]
    #[serde(skip)]
    Tempox(#[from] tempox::Error),
}

/// The common alias: one type parameter.
pub type Result<T> = std::result::Result<T, MyError>;

#[idempotent(key = id)]
async fn reserve(id: u64) -> Result<u64> {
    if id == 0 {
        return Err(MyError::NoStock);
    }
    Ok(id * 2)
}

#[idempotent(key = id, cache_errors, retry = 2)]
async fn reserve_cached(id: u64) -> Result<u64> {
    if id == 0 {
        Err(MyError::NoStock)
    } else {
        Ok(id)
    }
}

#[non_idempotent(compensate = undo)]
async fn charge(cents: u64) -> Result<u64> {
    Ok(cents)
}

#[idempotent]
async fn undo(cents: u64) -> Result<()> {
    let _ = cents;
    Ok(())
}

mod io_style {
    /// Another shape: the error has a default.
    pub type Result<T, E = super::MyError> = std::result::Result<T, E>;

    #[tempox::idempotent(key = id)]
    pub async fn lookup(id: u64) -> Result<u64> {
        Ok(id + 1)
    }

    #[tempox::idempotent(key = id)]
    pub async fn lookup_explicit(id: u64) -> Result<u64, super::MyError> {
        Ok(id + 2)
    }
}

mod shadowed {
    /// Shadows the prelude's `Result` with a different shape: the expansion
    /// names `::core::result::Result` and is not fooled.
    #[allow(dead_code)]
    pub enum Result {
        Yes,
        No,
    }

    pub type Outcome<T> = std::result::Result<T, super::MyError>;

    #[tempox::idempotent(key = id)]
    pub async fn check(id: u64) -> Outcome<bool> {
        Ok(id.is_multiple_of(2))
    }

    #[tempox::non_idempotent(key = id, compensate = noop)]
    pub async fn notify(id: u64) -> std::result::Result<u64, super::MyError> {
        Ok(id)
    }
}

#[tokio::main]
async fn main() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    rt.scope(async {
        assert_eq!(reserve(4).await.unwrap(), 8);
        assert!(matches!(reserve(0).await, Err(MyError::NoStock)));
        assert_eq!(reserve_cached(3).await.unwrap(), 3);
        assert!(matches!(reserve_cached(0).await, Err(MyError::NoStock)));
        assert!(matches!(reserve_cached(0).await, Err(MyError::NoStock)));
        assert_eq!(charge(5).await.unwrap(), 5);
        undo(5).await.unwrap();
        assert_eq!(io_style::lookup(1).await.unwrap(), 2);
        assert_eq!(io_style::lookup_explicit(1).await.unwrap(), 3);
        assert!(shadowed::check(2).await.unwrap());
        assert_eq!(shadowed::notify(7).await.unwrap(), 7);
    })
    .await;
}
