//! One fixture per backend: the store under test, a second handle on the same
//! data, and a way to let time pass on the store's clock.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tempox::clock::ManualClock;
use tempox::store::{MemoryStore, SqliteStore, Store};

pub struct Fixture {
    pub store: Arc<dyn Store>,
    /// Another handle on the same records: a second connection where the backend
    /// has connections.
    pub other: Arc<dyn Store>,
    clock: Option<ManualClock>,
    _keep: Box<dyn Any + Send + Sync>,
}

impl Fixture {
    /// Lets `d` pass on the store's clock: instantly on a manual clock, really on a
    /// server's clock.
    pub async fn pass(&self, d: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(d),
            None => tokio::time::sleep(d).await,
        }
    }
}

pub async fn memory() -> Fixture {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    Fixture {
        store: Arc::new(store.clone()),
        other: Arc::new(store),
        clock: Some(clock),
        _keep: Box::new(()),
    }
}

/// A SQLite file in a fresh temporary directory, opened twice: two connections
/// with two writer threads, as two processes would.
pub async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tempox.db");
    let clock = ManualClock::new();
    let store = SqliteStore::builder(&path)
        .clock(clock.clone())
        .open()
        .unwrap();
    let other = SqliteStore::builder(&path)
        .clock(clock.clone())
        .open()
        .unwrap();
    Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock: Some(clock),
        _keep: Box::new(dir),
    }
}
