//! Fixtures shared by the test binaries.
#![allow(dead_code, unreachable_pub)]

pub mod backend;
pub mod redis;

/// Stamps `mod $backend` with one `#[tokio::test]` per case, each running
/// `crate::$module::$case(&fixture)` on the fixture `$make` gives (awaited),
/// so a failure names both the case and the backend.
#[allow(unused_macros)]
macro_rules! stamp {
    ($backend:ident => $make:expr; $module:ident; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = $make.await;
                    crate::$module::$case(&fixture).await;
                }
            )*
        }
    };
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempox::record::{ClaimRequest, Claimed, Transition, Transitioned};
use tempox::store::{MemoryStore, Query, Store};
use tempox::{Record, RecordId, Status, StoreError, StoreErrorKind, Timestamp};

/// A real store with a switch that makes its writes fail as an outage would:
/// the request is refused before it reaches the store.
#[derive(Debug, Clone)]
pub struct Outage<S> {
    pub inner: S,
    down: Arc<AtomicBool>,
}

impl<S: Store + Clone> Outage<S> {
    pub fn new(inner: S) -> Self {
        Outage {
            inner,
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "store is down (test outage)",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl<S: Store + Clone> Store for Outage<S> {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        self.check()?;
        self.inner.claim(req).await
    }
    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        self.check()?;
        self.inner.transition(t).await
    }
    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        self.check()?;
        self.inner.renew(id, status, token, lease).await
    }
    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.inner.get(id).await
    }
    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.inner.due(limit).await
    }
    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        self.inner.list(query).await
    }
    async fn expire(&self, limit: usize) -> Result<usize, StoreError> {
        self.inner.expire(limit).await
    }
    async fn now(&self) -> Result<Timestamp, StoreError> {
        self.inner.now().await
    }
}

/// The one record of `op` in `store`.
pub async fn only_record(store: &MemoryStore, op: &str) -> Record {
    let q = Query {
        op: Some(op.to_owned()),
        ..Query::default()
    };
    let mut all = store.list(&q).await.expect("list");
    assert_eq!(all.len(), 1, "expected one record of {op}, found {all:?}");
    all.remove(0)
}

/// Waits (yielding, no timer) until `cond` holds, for at most ~5 s of polls.
pub async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..5_000_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}
