use std::time::Duration;

use serde::{Deserialize, Serialize};
use tempox::store::Store;
use tempox::{ErrorClass, Runtime};

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum TestError {
    #[error("boom {0}")]
    Boom(u32),
    #[error("declined")]
    Declined,
    #[error("timed out after sending")]
    Timeout,
    #[error(transparent)]
    #[serde(skip)]
    Tempox(#[from] tempox::Error),
}

impl ErrorClass for TestError {
    fn outcome_unknown(&self) -> bool {
        matches!(self, TestError::Timeout)
    }
    fn retryable(&self) -> bool {
        !matches!(self, TestError::Declined)
    }
}

impl TestError {
    pub fn tempox(&self) -> Option<&tempox::Error> {
        match self {
            TestError::Tempox(e) => Some(e),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub cents: u64,
}

pub fn order(id: &str, cents: u64) -> Order {
    Order {
        id: id.to_owned(),
        cents,
    }
}

/// A runtime on `store` with a 30 s lease and fast retry backoff.
pub fn runtime(store: impl Store) -> Runtime {
    Runtime::builder()
        .store(store)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(4))
        .build()
        .unwrap()
}

/// Past the default 30 s lease.
pub const PAST_LEASE: Duration = Duration::from_secs(31);
