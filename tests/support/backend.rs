//! One store per backend, as the workflow and reconciler suites use them: the
//! store, a way to let leases run out, and fresh runtimes on it (as if in
//! other processes).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tempox::Runtime;
use tempox::clock::ManualClock;
use tempox::store::{MemoryStore, SqliteStore, Store};

pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn Store>,
    clock: Option<ManualClock>,
    lease: Duration,
    /// The retention of [`retaining`](Self::retaining) runtimes: the default
    /// day where time is a manual clock's, a second on a real one.
    retention: Duration,
    _keep: Box<dyn Any + Send + Sync>,
}

impl Backend {
    /// A new runtime on the same store: as if in another process.
    pub fn runtime(&self) -> Runtime {
        self.runtime_with(3)
    }

    pub fn runtime_with(&self, compensation_attempts: u32) -> Runtime {
        self.builder()
            .compensation_attempts(compensation_attempts)
            .build()
            .unwrap()
    }

    /// A runtime builder on the store with the backend's lease and a fast backoff.
    pub fn builder(&self) -> tempox::RuntimeBuilder {
        self.builder_on(self.store.clone())
    }

    /// [`builder`](Self::builder) on `store` (the backend's, wrapped).
    pub fn builder_on(&self, store: Arc<dyn Store>) -> tempox::RuntimeBuilder {
        Runtime::builder()
            .shared_store(store)
            .lease(self.lease)
            .retry_backoff(Duration::from_millis(1), Duration::from_millis(4))
    }

    /// [`builder`](Self::builder) with a retention that
    /// [`pass_retention`](Self::pass_retention) lets run out.
    pub fn retaining(&self) -> tempox::RuntimeBuilder {
        self.builder().retention(self.retention)
    }

    /// The runtimes' lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Lets every lease run out.
    pub async fn pass_lease(&self) {
        self.pass(self.lease + Duration::from_millis(100)).await;
    }

    /// Lets the runtimes' retention (and every lease) run out.
    pub async fn pass_retention(&self) {
        self.pass(self.retention + self.lease + Duration::from_millis(100))
            .await;
    }

    /// A key no other backend's run of `scenario` uses.
    pub fn key(&self, scenario: &str) -> String {
        format!("{scenario}-{}", self.name)
    }

    /// Lets `d` pass on the store's clock.
    pub async fn pass(&self, d: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(d),
            None => tokio::time::sleep(d).await,
        }
    }
}

pub async fn memory() -> Backend {
    let clock = ManualClock::new();
    Backend {
        name: "memory",
        store: Arc::new(MemoryStore::with_clock(clock.clone())),
        clock: Some(clock),
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(86_400),
        _keep: Box::new(()),
    }
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = SqliteStore::builder(dir.path().join("wf.db"))
        .clock(clock.clone())
        .open()
        .unwrap();
    Backend {
        name: "sqlite",
        store: Arc::new(store),
        clock: Some(clock),
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(86_400),
        _keep: Box::new(dir),
    }
}

/// A real redis-server on a loopback port; leases on its clock, so they are short.
#[cfg(feature = "redis")]
pub async fn redis() -> Backend {
    let server = tokio::task::spawn_blocking(crate::support::redis::RedisServer::start)
        .await
        .unwrap();
    let store = tempox::store::RedisStore::connect(&server.url())
        .await
        .unwrap();
    Backend {
        name: "redis",
        store: Arc::new(store),
        clock: None,
        lease: Duration::from_millis(300),
        retention: Duration::from_secs(1),
        _keep: Box::new(server),
    }
}

/// A real Redis Cluster of three masters (shared by the test binary), under a
/// prefix of its own: records spread over nodes whose clocks each decide the
/// leases they hold.
#[cfg(feature = "redis")]
pub async fn redis_cluster() -> Backend {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cluster = tokio::task::spawn_blocking(crate::support::redis::RedisCluster::shared)
        .await
        .unwrap();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let prefix = format!("backend-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let store = tempox::store::RedisStore::cluster_builder(&urls)
        .prefix(prefix)
        .connect()
        .await
        .unwrap();
    Backend {
        name: "redis_cluster",
        store: Arc::new(store),
        clock: None,
        lease: Duration::from_millis(300),
        retention: Duration::from_secs(1),
        _keep: Box::new(()),
    }
}
