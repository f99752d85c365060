//! `RedisStore::wait_for_replicas` with a real primary and replica: a write is
//! reported done only once the replica holds it, a write no replica
//! acknowledges fails with an error that says so, and a failover to the
//! replica keeps every outcome that was reported.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

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

/// A store that waits `within` for one replica, and gives a call room for
/// a wait queued behind another.
fn waiting_store(primary: &RedisServer, within: Duration) -> tempox::store::RedisStoreBuilder {
    RedisStore::builder(&primary.url())
        .response_timeout((within * 3).max(Duration::from_secs(3)))
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
    let store = waiting_store(&primary, Duration::from_secs(2))
        .require_durability(true)
        .connect()
        .await
        .unwrap();

    // Reported done: the replica has it the moment the call returns.
    claimed_on_replica(&store, &replica, "replicated").await;
    // A claim whose lease runs out, to be taken over.
    let mut expired = crate::faults::claim_request("expired");
    expired.lease = Duration::from_millis(50);
    let Claimed::Acquired { record, .. } = store.claim(&expired).await.unwrap() else {
        panic!("not acquired");
    };
    let lease_until = record.lease_until.unwrap();
    while store.now().await.unwrap() <= lease_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The replica stops acknowledging (still connected) once it has
    // acknowledged all it had: claims fail, and say why and what to check.
    // The primary applied them and gives them back: a new key is released,
    // so a retry can have it at once; a takeover goes back to pending and
    // expired, so the next caller still takes it over (and a non-idempotent
    // one probes).
    primary.wait_acknowledged();
    let paused = replica.pause();
    let lone = crate::faults::claim_request("unreplicated");
    let claims: Vec<_> = [lone.clone(), expired.clone()]
        .into_iter()
        .map(|req| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(&req).await })
        })
        .collect();
    // While they wait (a client blocked in WAIT), reads go through.
    let deadline = Instant::now() + Duration::from_secs(5);
    let blocked = |list: String| {
        list.lines()
            .any(|l| l.contains(" flags=b ") && l.contains(" cmd=wait "))
    };
    while !blocked(primary.cli(&["CLIENT", "LIST"])) {
        assert!(Instant::now() < deadline && !claims[0].is_finished());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = store.get(&lone.id).await.unwrap();
    assert!(seen.is_some());
    assert!(
        blocked(primary.cli(&["CLIENT", "LIST"])),
        "a read waited behind a claim's WAIT"
    );
    let mut errors = Vec::new();
    for claim in claims {
        errors.push(claim.await.unwrap().unwrap_err());
    }
    let applied = format!(
        "redis at 127.0.0.1:{} applied the call's writes, if any",
        primary.port()
    );
    for (err, key) in errors.iter().zip(["unreplicated", "expired"]) {
        assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
        let text = err.to_string();
        let claiming = format!("claiming `faults.claim/{key}`");
        for part in [
            applied.as_str(),
            "but 0 of the 1 replica(s) it must wait for acknowledged them within 2s",
            claiming.as_str(),
            "INFO replication",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }
    let lone_key = store.record_key(&lone.id);
    assert_eq!(
        primary.cli(&["HGET", &lone_key, "status"]).trim(),
        "released"
    );
    let expired_key = store.record_key(&expired.id);
    let fields = primary.cli(&["HMGET", &expired_key, "status", "lease_until", "attempts"]);
    assert_eq!(fields.lines().collect::<Vec<_>>(), ["pending", "", "2"]);

    // Acknowledging again: the retries take the keys, and are done.
    drop(paused);
    for (req, before) in [
        (&lone, tempox::Status::Released),
        (&expired, tempox::Status::Pending),
    ] {
        match store.claim(req).await.unwrap() {
            Claimed::Acquired { previous, .. } => assert_eq!(previous, Some(before)),
            other => panic!("{other:?}"),
        }
        let key = store.record_key(&req.id);
        assert_eq!(replica.cli(&["HGET", &key, "status"]).trim(), "pending");
    }

    // A store that requires durability is refused while the primary has no
    // replica, and says which server lacks it.
    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let err = waiting_store(&primary, Duration::from_millis(300))
        .require_durability(true)
        .connect()
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "redis at 127.0.0.1:{} has 0 replica(s) online; the store waits for 1",
            primary.port()
        )),
        "{err}"
    );
}

/// A claim queued behind another call's wait can outlast its caller's
/// response timeout: when its own call comes back unacknowledged, nobody
/// waits for it, and the store gives it back all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_caller_gave_up_is_given_back_too() {
    let (primary, replica) = primary_and_replica().await;
    let store = RedisStore::builder(&primary.url())
        .response_timeout(Duration::from_millis(1500))
        .wait_for_replicas(1, Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    primary.wait_acknowledged();
    let paused = replica.pause();
    let (first, queued) = (
        crate::faults::claim_request("first"),
        crate::faults::claim_request("queued"),
    );
    let (a, b) = tokio::join!(store.claim(&first), store.claim(&queued));
    let (a, b) = (a.unwrap_err(), b.unwrap_err());
    assert!(a.to_string().contains("acknowledged them within 1s"), "{a}");
    assert!(
        b.to_string().contains("did not answer within 1500ms"),
        "{b}"
    );
    let key = store.record_key(&queued.id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while primary.cli(&["HGET", &key, "status"]).trim() != "released" {
        assert!(
            Instant::now() < deadline,
            "the queued claim was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(paused);
}

static RUNS: AtomicU32 = AtomicU32::new(0);

#[tempox::idempotent(key = id, name = "replicas.pay")]
async fn pay(id: u32) -> Result<u32, FaultError> {
    RUNS.fetch_add(1, SeqCst);
    Ok(id * 2)
}

/// The replica dies (SIGKILL) in the middle of a burst of calls, then the
/// primary dies too, and the replica comes back from its own files and
/// takes over: every call that returned its result is there, completed, and
/// replays on the new primary without running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_the_replica_keeps_every_reported_outcome() {
    const CALLS: u32 = 200;
    let (mut primary, mut replica) = primary_and_replica().await;
    // Calls that must be done wait long enough for a slow disk; those made
    // without a replica fail after a short wait.
    let runtime = |within| {
        let connect = waiting_store(&primary, within).connect();
        async move {
            Runtime::builder()
                .store(connect.await.unwrap())
                .build()
                .unwrap()
        }
    };
    let patient = runtime(Duration::from_secs(2)).await;
    let hasty = runtime(Duration::from_millis(300)).await;
    let burst = |rt: &Runtime, calls: std::ops::Range<u32>| {
        let tasks: Vec<_> = calls
            .map(|i| {
                let rt = rt.clone();
                tokio::spawn(async move { (i, rt.scope(pay(i)).await) })
            })
            .collect();
        async move {
            let mut returned = Vec::new();
            for task in tasks {
                let (i, result) = task.await.unwrap();
                match result {
                    Ok(v) => {
                        assert_eq!(v, i * 2);
                        returned.push(i);
                    }
                    Err(e) => assert!(e.to_string().contains("acknowledged"), "{e}"),
                }
            }
            returned
        }
    };
    let mut returned = burst(&patient, 0..CALLS / 2).await;
    assert_eq!(returned.len(), usize::try_from(CALLS / 2).unwrap());
    replica = tokio::task::spawn_blocking(move || {
        replica.kill();
        replica
    })
    .await
    .unwrap();
    returned.extend(burst(&hasty, CALLS / 2..CALLS).await);

    // Failover: the primary is gone without a chance to send anything more,
    // and the replica comes back with what it had.
    let replica = tokio::task::spawn_blocking(move || {
        primary.kill();
        replica.restart();
        replica.cli(&["REPLICAOF", "NO", "ONE"]);
        replica
    })
    .await
    .unwrap();
    let promoted = RedisStore::connect(&replica.url()).await.unwrap();
    for &i in &returned {
        let id = RecordId::new("replicas.pay", &Key::new(i.to_string()).unwrap());
        let record = promoted.get(&id).await.unwrap();
        assert_eq!(
            record.map(|r| r.status),
            Some(tempox::Status::Completed),
            "{id} returned its result before the failover"
        );
    }
    let runs = RUNS.load(SeqCst);
    let rt = Runtime::builder().store(promoted).build().unwrap();
    for &i in &returned {
        assert_eq!(rt.scope(pay(i)).await.unwrap(), i * 2);
    }
    assert_eq!(RUNS.load(SeqCst), runs, "a reported outcome ran again");
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
    // Claims that must be done wait long enough for a slow disk; those made
    // without a replica fail after a short wait.
    let connect = |within| {
        RedisStore::cluster_builder(&urls)
            .response_timeout(Duration::from_secs(5))
            .wait_for_replicas(1, within)
            .require_durability(true)
            .connect()
    };
    let store = connect(Duration::from_secs(2)).await.unwrap();
    let hasty = connect(Duration::from_millis(100)).await.unwrap();
    let keys_on = |node: &RedisServer| -> HashSet<String> {
        node.cli(&["KEYS", "*"])
            .lines()
            .map(str::to_owned)
            .collect()
    };

    let mut claimed = Vec::new();
    for i in 0..24 {
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
    for i in 0..24 {
        let req = crate::faults::claim_request(&format!("after-{i}"));
        let key = store.record_key(&req.id);
        match hasty.claim(&req).await {
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
