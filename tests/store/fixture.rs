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

/// A redis-server of its own (AOF on, `appendfsync always`), reached through
/// two connections; stopped when the fixture is dropped. Its settings keep
/// every guarantee: the stores require it.
#[cfg(feature = "redis")]
pub async fn redis() -> Fixture {
    single(crate::support::redis::RedisServer::start).await
}

/// A redis-server and its replica, reached through two connections to the
/// primary that wait for the replica to acknowledge every write (and
/// require it to be connected).
#[cfg(feature = "redis")]
pub async fn redis_replicated() -> Fixture {
    use crate::support::redis::RedisServer;
    let (primary, replica) = tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        (primary, replica)
    })
    .await
    .unwrap();
    on_servers(
        &[primary.url()],
        None,
        None,
        true,
        Box::new((primary, replica)),
    )
    .await
}

/// Like [`redis`], but the server speaks only TLS, with certificates of an
/// authority made for it, and the connections (`rediss://`) trust that
/// authority.
#[cfg(feature = "redis-tls")]
pub async fn redis_tls() -> Fixture {
    use crate::support::redis::{RedisServer, Tls};
    single(|| RedisServer::start_tls(Tls::new(false))).await
}

#[cfg(feature = "redis")]
async fn single(start: fn() -> crate::support::redis::RedisServer) -> Fixture {
    let server = tokio::task::spawn_blocking(start).await.unwrap();
    on_servers(
        &[server.url()],
        None,
        server.tls().cloned(),
        false,
        Box::new(server),
    )
    .await
}

/// The test binary's three-master Redis Cluster (started once: forming a
/// cluster takes seconds), under a key prefix of this fixture's own, reached
/// through two cluster connections that require every master's settings to
/// keep the guarantees.
#[cfg(feature = "redis")]
pub async fn redis_cluster() -> Fixture {
    cluster(crate::support::redis::RedisCluster::shared).await
}

/// The same on the test binary's cluster that speaks only TLS (clients and
/// cluster bus) and asks clients for a certificate: the connections trust
/// its authority and present the client certificate it signed.
#[cfg(feature = "redis-tls")]
pub async fn redis_cluster_tls() -> Fixture {
    cluster(crate::support::redis::RedisCluster::shared_tls).await
}

#[cfg(feature = "redis")]
async fn cluster(shared: fn() -> &'static crate::support::redis::RedisCluster) -> Fixture {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cluster = tokio::task::spawn_blocking(shared).await.unwrap();
    let prefix = format!("conformance-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let tls = cluster.tls().cloned();
    on_servers(&cluster.urls(), Some(prefix), tls, false, Box::new(())).await
}

/// Two stores that require durability on `urls` (a cluster's nodes when a
/// prefix is given), trusting `tls`'s authority and presenting its client
/// certificate when there is one, and with `wait_for_replica` waiting for a
/// replica to acknowledge every write.
#[cfg(feature = "redis")]
async fn on_servers(
    urls: &[String],
    cluster_prefix: Option<String>,
    tls: Option<crate::support::redis::Tls>,
    wait_for_replica: bool,
    keep: Box<dyn Any + Send + Sync>,
) -> Fixture {
    use tempox::store::RedisStore;
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let connect = || {
        let builder = match &cluster_prefix {
            Some(prefix) => RedisStore::cluster_builder(&urls).prefix(prefix.clone()),
            None => RedisStore::builder(urls[0]),
        };
        #[cfg(feature = "redis-tls")]
        let builder = match &tls {
            Some(tls) => builder
                .tls_root_certificates(tls.ca.clone())
                .tls_client_certificate(tls.client_cert.clone(), tls.client_key.clone()),
            None => builder,
        };
        #[cfg(not(feature = "redis-tls"))]
        let _ = &tls;
        let builder = if wait_for_replica {
            builder.wait_for_replicas(1, Duration::from_secs(2))
        } else {
            builder
        };
        builder.require_durability(true).connect()
    };
    let store = connect().await.unwrap();
    let other = connect().await.unwrap();
    Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock: None,
        _keep: keep,
    }
}
