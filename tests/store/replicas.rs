//! `RedisStore::wait_for_replicas` with a real primary and replica: a write is
//! reported done only once the replica holds it, a write no replica
//! acknowledges fails with an error that says so, and a failover to the
//! replica keeps every outcome that was reported.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use tempox::record::Claimed;
use tempox::store::{RedisStore, Store};
use tempox::{Key, RecordId, Runtime, StoreErrorKind};

use crate::faults::FaultError;
use crate::support::redis::{RedisCluster, RedisServer};

/// A primary and its replica, synced.
async fn primary_and_replica() -> (RedisServer, RedisServer) {
    tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        (primary, replica)
    })
    .await
    .unwrap()
}

fn waiting_store(primary: &RedisServer, within: Duration) -> tempox::store::RedisStoreBuilder {
    RedisStore::builder(&primary.url())
        .response_timeout(Duration::from_secs(3))
        .wait_for_replicas(1, within)
}

/// Claims `key` and checks that the replica holds the claim the moment the
/// call returns.
async fn claimed_on_replica(store: &RedisStore, replica: &RedisServer, key: &str) {
    let req = crate::faults::claim_request(key);
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claimed::Acquired { .. }
    ));
    let key = store.record_key(&req.id);
    assert_eq!(replica.cli(&["HGET", &key, "status"]).trim(), "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_done_only_once_a_replica_holds_them() {
    let (primary, replica) = primary_and_replica().await;
    let store = waiting_store(&primary, Duration::from_millis(500))
        .require_durability(true)
        .connect()
        .await
        .unwrap();

    // Reported done: the replica has it the moment the call returns.
    claimed_on_replica(&store, &replica, "replicated").await;

    // The replica leaves: a write is applied by the primary but not reported
    // done, and the error says why and what to check.
    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let lone = crate::faults::claim_request("unreplicated");
    let err = store.claim(&lone).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    let text = err.to_string();
    let applied = format!("redis at 127.0.0.1:{} applied the write", primary.port());
    for part in [
        applied.as_str(),
        "but 0 of the 1 replica(s) it must wait for acknowledged it within 500ms",
        "claiming `faults.claim/unreplicated`",
        "INFO replication",
    ] {
        assert!(text.contains(part), "{text}");
    }
    let lone_key = store.record_key(&lone.id);
    assert_eq!(
        primary.cli(&["HGET", &lone_key, "status"]).trim(),
        "pending"
    );
    assert_eq!(replica.cli(&["EXISTS", &lone_key]).trim(), "0");

    // A store that requires durability is refused while the replica is away,
    // and says which server lacks it.
    let err = waiting_store(&primary, Duration::from_millis(500))
        .require_durability(true)
        .connect()
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "redis at 127.0.0.1:{} has 0 connected replica(s); the store waits for 1",
            primary.port()
        )),
        "{err}"
    );

    // Back: writes are done again, and the replica caught up on the one it
    // missed.
    let port = primary.port().to_string();
    replica.cli(&["REPLICAOF", "127.0.0.1", &port]);
    let replica = tokio::task::spawn_blocking(move || {
        replica.wait_synced();
        replica
    })
    .await
    .unwrap();
    claimed_on_replica(&store, &replica, "replicated-again").await;
    assert_eq!(
        replica.cli(&["HGET", &lone_key, "status"]).trim(),
        "pending"
    );
}

static RUNS: AtomicU32 = AtomicU32::new(0);

#[tempox::idempotent(key = id, name = "replicas.pay")]
async fn pay(id: u32) -> Result<u32, FaultError> {
    RUNS.fetch_add(1, SeqCst);
    Ok(id * 2)
}

/// The primary dies (SIGKILL) right after a burst of calls and its replica
/// takes over: every call that returned is there, completed, and replays on
/// the new primary without running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_the_replica_keeps_every_reported_outcome() {
    const CALLS: u32 = 200;
    let (mut primary, replica) = primary_and_replica().await;
    let store = waiting_store(&primary, Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let calls = (0..CALLS).map(|i| {
        let rt = rt.clone();
        tokio::spawn(async move { rt.scope(pay(i)).await })
    });
    for (i, call) in (0..CALLS).zip(calls.collect::<Vec<_>>()) {
        assert_eq!(call.await.unwrap().unwrap(), i * 2);
    }
    assert_eq!(RUNS.load(SeqCst), CALLS);

    // Failover: the primary is gone without a chance to send anything more.
    primary = tokio::task::spawn_blocking(move || {
        primary.kill();
        primary
    })
    .await
    .unwrap();
    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let promoted = RedisStore::connect(&replica.url()).await.unwrap();
    for i in 0..CALLS {
        let id = RecordId::new("replicas.pay", &Key::new(i.to_string()).unwrap());
        let record = promoted.get(&id).await.unwrap();
        assert_eq!(
            record.map(|r| r.status),
            Some(tempox::Status::Completed),
            "{id} after the failover"
        );
    }
    let rt = Runtime::builder().store(promoted).build().unwrap();
    for i in 0..CALLS {
        assert_eq!(rt.scope(pay(i)).await.unwrap(), i * 2);
    }
    assert_eq!(RUNS.load(SeqCst), CALLS, "a reported outcome ran again");
    drop(primary);
}

/// On a Redis Cluster a write waits for the replica of the master that owns
/// its slot: every claim is on a replica when it returns, and with one
/// replica gone exactly the claims of its master's slots fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_each_write_waits_for_the_replica_of_its_slot() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
        .await
        .unwrap();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::cluster_builder(&urls)
        .response_timeout(Duration::from_secs(3))
        .wait_for_replicas(1, Duration::from_millis(500))
        .require_durability(true)
        .connect()
        .await
        .unwrap();
    let keys_on = |node: &RedisServer| -> HashSet<String> {
        node.cli(&["KEYS", "*"])
            .lines()
            .map(str::to_owned)
            .collect()
    };

    let mut claimed = Vec::new();
    for i in 0..48 {
        let req = crate::faults::claim_request(&format!("spread-{i}"));
        assert!(matches!(
            store.claim(&req).await.unwrap(),
            Claimed::Acquired { .. }
        ));
        claimed.push(store.record_key(&req.id));
    }
    let on_replicas: HashSet<String> = cluster.replicas().into_iter().flat_map(keys_on).collect();
    for key in &claimed {
        assert!(on_replicas.contains(key), "{key} is on no replica");
    }

    // One replica goes: the claims of its master's slots fail, the rest are
    // done.
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.cli(&["INFO", "replication"]).contains("role:slave"))
        .unwrap();
    let info = cluster.nodes()[victim].cli(&["INFO", "replication"]);
    let master_port: u16 = info
        .lines()
        .find_map(|l| l.strip_prefix("master_port:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(victim);
        cluster
    })
    .await
    .unwrap();
    let (mut failed, mut done) = (HashSet::new(), HashSet::new());
    for i in 0..48 {
        let req = crate::faults::claim_request(&format!("after-{i}"));
        let key = store.record_key(&req.id);
        match store.claim(&req).await {
            Ok(Claimed::Acquired { .. }) => done.insert(key),
            Ok(other) => panic!("{key}: {other:?}"),
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::Timeout, "{e}");
                assert!(e.to_string().contains("0 of the 1 replica(s)"), "{e}");
                failed.insert(key)
            }
        };
    }
    let master = cluster
        .nodes()
        .iter()
        .find(|n| n.port() == master_port)
        .unwrap();
    let on_master: HashSet<String> = keys_on(master)
        .into_iter()
        .filter(|k| k.contains("after-"))
        .collect();
    assert!(
        !failed.is_empty() && !done.is_empty(),
        "{failed:?} {done:?}"
    );
    assert_eq!(
        failed, on_master,
        "the failed claims are those of the master without a replica"
    );
}
