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

/// What a [`Hooked`] store does besides passing calls on.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Run once, after the next `due` listing and before it is answered: a
    /// holder acting between a reconciler's listing and its writes.
    after_due: Arc<std::sync::Mutex<Option<futures_box::Hook>>>,
    /// Added to the store's clock as `now` answers it (a clock read from
    /// another node, or a pass started long ago).
    skew_ms: Arc<std::sync::atomic::AtomicU64>,
    /// While set, renewals wait for one of its permits (a store slow to
    /// answer them).
    renew_gate: Arc<std::sync::Mutex<Option<Arc<tokio::sync::Semaphore>>>>,
    /// Reads of single records (`get`).
    pub gets: Arc<std::sync::atomic::AtomicU64>,
}

pub mod futures_box {
    pub type Hook = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

impl Hooks {
    pub fn after_next_due(&self, hook: impl std::future::Future<Output = ()> + Send + 'static) {
        *self.after_due.lock().unwrap() = Some(Box::pin(hook));
    }

    pub fn skew_clock(&self, by: Duration) {
        self.skew_ms
            .store(u64::try_from(by.as_millis()).unwrap(), Ordering::SeqCst);
    }

    pub fn hold_renewals(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.renew_gate.lock().unwrap() = Some(gate.clone());
        gate
    }
}

/// A real store with [`Hooks`].
#[derive(Clone)]
pub struct Hooked {
    pub inner: Arc<dyn Store>,
    pub hooks: Hooks,
}

impl Hooked {
    pub fn wrap(inner: Arc<dyn Store>) -> (Arc<dyn Store>, Hooks) {
        let hooks = Hooks::default();
        let store = Hooked {
            inner,
            hooks: hooks.clone(),
        };
        (Arc::new(store), hooks)
    }
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait::async_trait]
impl Store for Hooked {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        self.inner.claim(req).await
    }
    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        self.inner.transition(t).await
    }
    async fn apply(&self, t: &Transition) -> Result<bool, StoreError> {
        self.inner.apply(t).await
    }
    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        let gate = self.hooks.renew_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.map(|p| p.forget()).ok();
        }
        self.inner.renew(id, status, token, lease).await
    }
    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.hooks.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id).await
    }
    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        let due = self.inner.due(limit).await?;
        let hook = self.hooks.after_due.lock().unwrap().take();
        if let Some(hook) = hook {
            hook.await;
        }
        Ok(due)
    }
    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        self.inner.list(query).await
    }
    async fn expire(&self, limit: usize) -> Result<usize, StoreError> {
        self.inner.expire(limit).await
    }
    async fn now(&self) -> Result<Timestamp, StoreError> {
        let now = self.inner.now().await?;
        let skew = self.hooks.skew_ms.load(Ordering::SeqCst);
        Ok(Timestamp::from_millis(now.as_millis() + skew))
    }
}
