//! `RedisStore` under faults: a server killed and restarted under load, its
//! script cache flushed, data opened with another layout, corrupt records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tempox::record::{ClaimRequest, Claimed, OnExpired};
use tempox::store::{RedisStore, Store};
use tempox::{Error, Fingerprint, Key, Kind, RecordId, Runtime, Status, StoreErrorKind};

use crate::support::redis::{RedisCluster, RedisServer};

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

/// How often each key's body ran.
static RUNS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(Mutex::default);

#[tempox::idempotent(key = id, name = "faults.work")]
async fn work(id: String) -> Result<String, FaultError> {
    *RUNS.lock().unwrap().entry(id.clone()).or_default() += 1;
    Ok(format!("done {id}"))
}

fn record_id(key: &str) -> RecordId {
    RecordId::new("faults.work", &Key::new(key).unwrap())
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const RESTARTING: u8 = 2;
const BACK: u8 = 3;

struct Call {
    key: String,
    started: u8,
    ended: u8,
    result: Result<String, FaultError>,
}

/// A server of this test's own, and a store on it.
async fn server_and_store() -> (RedisServer, RedisStore) {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = store_on(&server).await;
    (server, store)
}

async fn store_on(server: &RedisServer) -> RedisStore {
    RedisStore::builder(&server.url())
        .response_timeout(Duration::from_secs(1))
        .connection_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap()
}

/// A server killed mid-load and restarted on the same port: calls during the
/// outage fail as `Store` errors that say the store is unavailable (or timed
/// out), the same runtime works again once it is back, nothing that completed
/// is lost, and no body runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_under_load_loses_nothing_and_comes_back() {
    let started = Instant::now();
    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = store_on(&server).await;
    let rt = Runtime::builder().store(store.clone()).build().unwrap();
    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let successes_back = Arc::new(Mutex::new(HashMap::<usize, usize>::new()));

    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let (rt, phase, stop, back) = (
                rt.clone(),
                phase.clone(),
                stop.clone(),
                successes_back.clone(),
            );
            tokio::spawn(async move {
                let mut calls = Vec::new();
                for i in 0..5_000 {
                    if stop.load(SeqCst) {
                        break;
                    }
                    let key = format!("load-{task}-{i}");
                    let started = phase.load(SeqCst);
                    let result = rt.scope(work(key.clone())).await;
                    let ended = phase.load(SeqCst);
                    if started == BACK && result.is_ok() {
                        *back.lock().unwrap().entry(task).or_default() += 1;
                    }
                    calls.push(Call {
                        key,
                        started,
                        ended,
                        result,
                    });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                calls
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(400)).await;
    server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    phase.store(DOWN, SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    phase.store(RESTARTING, SeqCst);
    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    phase.store(BACK, SeqCst);
    // The same runtime works again: every load task completes calls.
    let deadline = Instant::now() + Duration::from_secs(5);
    while successes_back
        .lock()
        .unwrap()
        .values()
        .filter(|&&n| n >= 20)
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "calls did not succeed again after the restart: {successes_back:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, SeqCst);
    let mut calls = Vec::new();
    for t in tasks {
        calls.extend(t.await.unwrap());
    }

    let count = |f: &dyn Fn(&Call) -> bool| calls.iter().filter(|c| f(c)).count();
    let during = |c: &Call| c.started == DOWN && c.ended == DOWN;
    eprintln!(
        "calls: {} ok before the kill, {} during the outage, {} across the kill or restart, {} ok after the restart",
        count(&|c| c.started == UP && c.result.is_ok()),
        count(&during),
        count(&|c| c.started != c.ended),
        count(&|c| c.started == BACK && c.result.is_ok()),
    );
    assert!(
        count(&|c| c.started == UP && c.result.is_ok()) >= 20,
        "too little load before the kill"
    );
    assert!(count(&during) >= 10, "too few calls during the outage");
    for c in calls.iter().filter(|c| during(c)) {
        match &c.result {
            Err(FaultError::Tempox(Error::Store { source })) => {
                assert!(source.is_unavailable() || source.is_timeout(), "{source:?}");
                assert!(
                    source
                        .to_string()
                        .contains(&format!("redis at 127.0.0.1:{}", server.port())),
                    "the message names the server: {source}"
                );
            }
            other => panic!("a call during the outage returned {other:?}"),
        }
    }
    // After its first success back, each task's calls all succeed.
    for task in 0..4 {
        let prefix = format!("load-{task}-");
        let back: Vec<&Call> = calls
            .iter()
            .filter(|c| c.key.starts_with(&prefix) && c.started == BACK)
            .collect();
        let first_ok = back
            .iter()
            .position(|c| c.result.is_ok())
            .expect("a success after the restart");
        for c in &back[first_ok..] {
            assert!(c.result.is_ok(), "{}: {:?}", c.key, c.result);
        }
    }

    // Nothing completed is lost; replays return the recorded output without
    // running the body again.
    let completed: Vec<&Call> = calls.iter().filter(|c| c.result.is_ok()).collect();
    for c in &completed {
        let record = store
            .get(&record_id(&c.key))
            .await
            .unwrap()
            .expect("the record survived");
        assert_eq!(record.status, Status::Completed, "{}", c.key);
        let expected = serde_json::to_vec(&format!("done {}", c.key)).unwrap();
        assert_eq!(
            record.output.as_deref(),
            Some(expected.as_slice()),
            "{}",
            c.key
        );
    }
    for c in completed.iter().filter(|c| c.started == UP).take(200) {
        assert_eq!(
            rt.scope(work(c.key.clone())).await.unwrap(),
            format!("done {}", c.key)
        );
    }
    let runs = RUNS.lock().unwrap();
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "bodies ran more than once: {twice:?}");
    for c in &completed {
        assert_eq!(runs.get(&c.key), Some(&1), "{}", c.key);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// One master of a three-master Redis Cluster killed (no replica to take its
/// slots over) and restarted with its data: while it is down, calls whose
/// bucket it serves fail as `Store` errors and the others go on; once it is
/// back, the same runtime serves every bucket again, nothing completed is
/// lost, and no body runs twice. The outage (a few seconds) is shorter than
/// the nodes' `cluster-node-timeout` (15 s by default), so the others never
/// mark it failed and the cluster stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_and_restarted_loses_nothing() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::cluster_builder(&urls)
        .prefix("cluster-fault")
        .response_timeout(Duration::from_secs(1))
        .connection_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let rt = Runtime::builder().store(store.clone()).build().unwrap();
    let call = |key: String| rt.scope(work(key));
    let keys =
        |phase: &str| -> Vec<String> { (0..48).map(|i| format!("cluster-{phase}-{i}")).collect() };

    let before = keys("before");
    for r in futures_join_all(before.iter().cloned().map(call)).await {
        r.unwrap();
    }
    cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(0);
        cluster
    })
    .await
    .unwrap();
    // Each key is tried until it succeeds or 4 s pass: the client may fail a
    // first round of calls everywhere while it learns that a node is gone.
    let during = keys("during");
    let deadline = Instant::now() + Duration::from_secs(4);
    let attempts = during.iter().map(|key| async move {
        loop {
            match call(key.clone()).await {
                Ok(out) => return Ok(out),
                Err(FaultError::Tempox(Error::Store { source })) => {
                    assert!(source.is_unavailable() || source.is_timeout(), "{source:?}");
                    if Instant::now() > deadline {
                        return Err(source);
                    }
                }
                Err(other) => panic!("a call during the outage returned {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let results = futures_join_all(attempts).await;
    let failed: Vec<&String> = during
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_err())
        .map(|(k, _)| k)
        .collect();
    // Exactly the keys whose bucket the dead master serves failed (16
    // buckets over three masters: some of them, not all).
    let dead_slots = slots_of(&cluster, 0);
    let on_dead: Vec<&String> = during
        .iter()
        .filter(|key| {
            let slot =
                cluster.nodes()[1].cli(&["CLUSTER", "KEYSLOT", &store.record_key(&record_id(key))]);
            let slot: u16 = slot.trim().parse().unwrap();
            dead_slots.iter().any(|r| r.contains(&slot))
        })
        .collect();
    assert!(
        !on_dead.is_empty() && on_dead.len() < during.len(),
        "{on_dead:?}"
    );
    assert_eq!(failed, on_dead);

    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(0);
        cluster
    })
    .await
    .unwrap();
    // The store finds the node again by itself; calls succeed within seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    for key in &failed {
        loop {
            match call((*key).clone()).await {
                Ok(out) => {
                    assert_eq!(out, format!("done {key}"));
                    break;
                }
                Err(FaultError::Tempox(Error::Store { source }))
                    if source.is_unavailable() || source.is_timeout() =>
                {
                    assert!(Instant::now() < deadline, "{key} still failing: {source:?}");
                }
                Err(other) => panic!("{key} after the restart: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for key in before.iter().chain(&during) {
        assert_eq!(call(key.clone()).await.unwrap(), format!("done {key}"));
        let record = store.get(&record_id(key)).await.unwrap().expect("kept");
        assert_eq!(record.status, Status::Completed, "{key}");
    }
    let runs: Vec<Option<u32>> = {
        let runs = RUNS.lock().unwrap();
        before
            .iter()
            .chain(&during)
            .map(|k| runs.get(k).copied())
            .collect()
    };
    assert!(runs.iter().all(|n| *n == Some(1)), "{runs:?}");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// The slot ranges node `i` serves, as another node sees it (`CLUSTER NODES`).
fn slots_of(cluster: &RedisCluster, i: usize) -> Vec<std::ops::RangeInclusive<u16>> {
    let port = cluster.nodes()[i].port();
    let other = &cluster.nodes()[(i + 1) % cluster.nodes().len()];
    let nodes = other.cli(&["CLUSTER", "NODES"]);
    let line = nodes
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port}@")))
        .unwrap_or_else(|| panic!("node {port} not in {nodes}"));
    // <id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
    line.split_whitespace()
        .skip(8)
        .map(|r| match r.split_once('-') {
            Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
            None => {
                let s = r.parse().unwrap();
                s..=s
            }
        })
        .collect()
}

pub(crate) fn claim_request(key: &str) -> ClaimRequest {
    ClaimRequest {
        id: RecordId::new("faults.claim", &Key::new(key).unwrap()),
        kind: Kind::Idempotent,
        fingerprint: Fingerprint::of(key).unwrap(),
        input: b"{}".to_vec().into(),
        lease: Duration::from_secs(30),
        on_expired: OnExpired::TakeOver,
        workflow: None,
        step: None,
    }
}

/// A store loads its scripts when it connects, so no call on a new server
/// meets an unknown script, and its connections send nothing the server
/// refuses (Redis before 7.2 has no `CLIENT SETINFO`): a server's error
/// counters stay at zero. A server that forgot the scripts (a restart,
/// `SCRIPT FLUSH`) gets each back from the first call that needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_loaded_again_when_the_server_forgot_them() {
    let (server, store) = server_and_store().await;
    assert!(matches!(
        store.claim(&claim_request("a")).await.unwrap(),
        Claimed::Acquired { .. }
    ));
    let errors = server.cli(&["INFO", "errorstats"]);
    assert!(!errors.contains("errorstat_"), "{errors}");
    let unknown = || server.cli(&["INFO", "errorstats"]).contains("NOSCRIPT");
    server.cli(&["SCRIPT", "FLUSH"]);
    assert!(matches!(
        store.claim(&claim_request("b")).await.unwrap(),
        Claimed::Acquired { .. }
    ));
    assert!(unknown(), "the claim met the flushed script and loaded it");
    assert!(matches!(
        store.claim(&claim_request("a")).await.unwrap(),
        Claimed::Existing(_)
    ));
}

/// A server whose settings can lose or evict records is named at connect:
/// the store connects anyway by default (and logs a warning), and is refused
/// with `require_durability`, before it writes anything. A user without
/// `CONFIG` (as on managed services) cannot tell, and is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_settings_are_checked_at_connect() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let strict = |url: String| async move {
        RedisStore::builder(&url)
            .require_durability(true)
            .connect()
            .await
            .map(|_| ())
    };
    server.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let err = strict(server.url()).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    let message = err.to_string();
    for part in [
        "appendonly yes and appendfsync everysec",
        "maxmemory-policy is allkeys-lru",
        "(refused: the store requires durability)",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "0", "nothing was written");
    RedisStore::connect(&server.url()).await.unwrap();

    server.cli(&["CONFIG", "SET", "appendfsync", "always"]);
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    strict(server.url()).await.unwrap();

    server.cli(&[
        "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-config",
    ]);
    let url = server.url().replacen("redis://", "redis://app:secret@", 1);
    let err = strict(url.clone()).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    assert!(
        err.to_string().contains("cannot read the settings"),
        "{err}"
    );
    assert!(!err.to_string().contains("secret"), "{err}");
    RedisStore::connect(&url).await.unwrap();
}

/// A server on a Unix socket is reached through `unix://<path>`, with the
/// same checks and scripts as over TCP; once it is gone, errors name the
/// socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_unix_socket_is_reached_through_its_path() {
    let mut server = tokio::task::spawn_blocking(RedisServer::start_unix)
        .await
        .unwrap();
    let url = server.url();
    assert!(url.starts_with("unix:///"), "{url}");
    let store = RedisStore::builder(&url)
        .require_durability(true)
        .response_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    claim_seen_by_the_server(&store, &server, "over-a-socket").await;
    server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    let err = store
        .get(&claim_request("over-a-socket").id)
        .await
        .unwrap_err();
    assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
    let socket = url.trim_start_matches("unix://");
    assert!(err.to_string().contains(socket), "{err}");
    drop(server);
}

/// Credentials the server refuses, and a password it wants that the URL
/// lacks, are `Invalid` errors that say so without repeating the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_missing_credentials_are_invalid() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    server.cli(&[
        "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all",
    ]);
    let url = server.url().replacen("redis://", "redis://app:secret@", 1);
    RedisStore::connect(&url).await.unwrap();
    // Credentials the server refuses: said so, without the password.
    let wrong = server.url().replacen("redis://", "redis://app:guessed@", 1);
    let err = RedisStore::connect(&wrong).await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("failed authentication"), "{err}");
    assert!(!format!("{err} {err:?}").contains("guessed"), "{err:?}");
    // A server that wants a password, and a url without one (last: the
    // fixture's redis-cli has none either).
    server.cli(&["CONFIG", "SET", "requirepass", "pw-of-default"]);
    let err = RedisStore::connect(&server.url())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("wants a password"), "{err}");
    let with = server
        .url()
        .replacen("redis://", "redis://:pw-of-default@", 1);
    RedisStore::connect(&with).await.unwrap();
}

/// On a Cluster too, a password the nodes want and the URLs lack, or a
/// wrong one, is an `Invalid` error (the cluster client reports it as an
/// I/O error), and the right one connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_wants_a_password_is_invalid_without_it() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    // Last: the fixture's redis-cli has no password either.
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "SET", "requirepass", "pw-of-cluster"]);
    }
    let with = |password: &str| {
        cluster
            .urls()
            .iter()
            .map(|u| u.replacen("redis://", &format!("redis://{password}"), 1))
            .collect::<Vec<_>>()
    };
    for urls in [with(""), with(":guessed@")] {
        let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
        let err = RedisStore::connect_cluster(&nodes)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("failed authentication"), "{err}");
        assert!(!format!("{err} {err:?}").contains("guessed"), "{err:?}");
    }
    let urls = with(":pw-of-cluster@");
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&nodes).await.unwrap();
    store
        .claim(&claim_request("behind-a-password"))
        .await
        .unwrap();
}

/// On Redis Cluster every master's settings are read: one master of three
/// that can lose writes or evict records is named (and only it), whichever
/// node the store met first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_settings_are_checked_on_every_cluster_master() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let strict = || async {
        RedisStore::cluster_builder(&urls)
            .prefix("durability")
            .require_durability(true)
            .connect()
            .await
            .map(|_| ())
    };
    strict().await.unwrap();
    let [first, lax, last] = cluster.nodes() else {
        panic!("three masters");
    };
    lax.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
    lax.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
    // The reply's order of nodes varies: each connect may read them in
    // another order.
    for _ in 0..4 {
        let err = strict().await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
        let message = err.to_string();
        let at = |node: &RedisServer| format!("redis at 127.0.0.1:{}", node.port());
        assert!(
            message.contains(&format!(
                "{} runs with appendonly yes and appendfsync everysec",
                at(lax)
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "{}: its maxmemory-policy is allkeys-random",
                at(lax)
            )),
            "{message}"
        );
        assert!(!message.contains(&at(first)), "{message}");
        assert!(!message.contains(&at(last)), "{message}");
    }
}

/// With `create(false)` a prefix that holds no tempox data is an error and
/// nothing is written (a tool must not start a store where a prefix was
/// mistyped); data already there opens as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_must_exist_is_not_created() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let existing = || {
        RedisStore::builder(&server.url())
            .prefix("shop")
            .create(false)
            .connect()
    };
    let err = existing().await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    assert!(
        err.to_string()
            .ends_with("holds no tempox data under prefix `shop`"),
        "{err}"
    );
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "0", "nothing was written");
    let store = RedisStore::builder(&server.url())
        .prefix("shop")
        .connect()
        .await
        .unwrap();
    store.claim(&claim_request("a")).await.unwrap();
    let reopened = existing().await.unwrap();
    assert!(
        reopened
            .get(&claim_request("a").id)
            .await
            .unwrap()
            .is_some()
    );
    // One bucket's layout record gone: that bucket is named.
    server.cli(&["DEL", "{shop:5}:meta"]);
    let err = existing().await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string()
            .contains("bucket(s) 5 have no layout record"),
        "{err}"
    );
}

/// Data is spread over a fixed number of buckets; opening it with another
/// number is refused with a message that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_with_another_number_of_buckets_is_refused() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store.claim(&claim_request("a")).await.unwrap();
    for buckets in [8, 32] {
        let err = RedisStore::builder(&server.url())
            .buckets(buckets)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
        assert!(err.to_string().contains("written with 16 buckets"), "{err}");
        assert!(err.to_string().contains("`.buckets(16)`"), "{err}");
    }
    // Another prefix is another store.
    let other = RedisStore::builder(&server.url())
        .prefix("other")
        .buckets(8)
        .connect()
        .await
        .unwrap();
    assert_eq!(other.get(&claim_request("a").id).await.unwrap(), None);
    assert!(
        RedisStore::builder(&server.url())
            .buckets(16)
            .connect()
            .await
            .is_ok()
    );
}

/// Data written in another layout (an older release's) is refused with an
/// error naming both versions, and is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_of_another_layout_is_refused_and_left_alone() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::builder(&server.url())
        .buckets(2)
        .connect()
        .await
        .unwrap();
    store.claim(&claim_request("a")).await.unwrap();
    for bucket in 0..2 {
        server.cli(&["HSET", &format!("{{tempox:{bucket}}}:meta"), "version", "1"]);
    }
    let before = server.cli(&["DBSIZE"]);
    let err = RedisStore::builder(&server.url())
        .buckets(2)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    let message = err.to_string();
    assert!(message.contains("layout version `1`"), "{message}");
    assert!(message.contains("reads layout version 2"), "{message}");
    assert!(
        message.contains("another prefix (`.prefix(..)`)"),
        "{message}"
    );
    assert_eq!(server.cli(&["DBSIZE"]), before, "nothing was written");
    assert_eq!(
        server.cli(&["HGET", "{tempox:0}:meta", "version"]).trim(),
        "1"
    );
}

/// A record hash that cannot be decoded is a `Corrupt` error naming the
/// record and the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_name_the_record_and_the_field() {
    let (server, store) = server_and_store().await;
    let req = claim_request("corrupt");
    store.claim(&req).await.unwrap();
    let key = store.record_key(&req.id);
    assert!(key.starts_with("{tempox:"), "{key}");
    server.cli(&["HSET", &key, "token", "12x"]);
    let err = store.get(&req.id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert!(err.to_string().contains("`faults.claim/corrupt`"), "{err}");
    assert!(err.to_string().contains("field `token`"), "{err}");
}

/// How many script calls (`EVALSHA`) `server` has run.
fn script_calls(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
    line.and_then(|l| l.split([':', ',']).find_map(|kv| kv.strip_prefix("calls=")))
        .map_or(0, |n| n.parse::<u64>().unwrap())
}

/// Claims and transitions sent while others are in flight share one script
/// call; a record the server refuses to work on (here a key of another type
/// where a record should be) fails its own request with the server's error and
/// leaves the key untouched, while every other request sent with it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_fails_alone_among_the_requests_sent_with_it() {
    let (server, store) = server_and_store().await;
    let bad = claim_request("wrong-type");
    let bad_key = store.record_key(&bad.id);
    server.cli(&["SET", &bad_key, "not a record"]);
    let script_calls = || script_calls(&server);
    let calls_before = script_calls();
    for round in 0..5 {
        // The refused request in the middle: the first one is sent alone,
        // the rest queue behind it and share the next call.
        let mut reqs: Vec<ClaimRequest> = (0..40)
            .map(|i| claim_request(&format!("neighbour-{round}-{i}")))
            .collect();
        reqs.insert(20, bad.clone());
        let claims = futures_join_all(reqs.iter().map(|r| store.claim(r))).await;
        for (req, claimed) in reqs.iter().zip(claims) {
            if req.id == bad.id {
                // Damaged-data issue, item 5: a record the server cannot
                // read as one is corrupt, named, and nothing was written.
                let err = claimed.unwrap_err();
                assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
                let text = err.to_string();
                assert!(text.contains("holds another type of value"), "{text}");
                assert!(text.contains("nothing was written"), "{text}");
                assert!(!text.contains("may or may not"), "{text}");
                assert!(text.contains("`faults.claim/wrong-type`"), "{text}");
                continue;
            }
            match claimed.unwrap() {
                Claimed::Acquired { record, previous } => {
                    assert_eq!((record.id, previous), (req.id.clone(), None));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(server.cli(&["GET", &bad_key]).trim(), "not a record");
    // A read of it says the same.
    let err = store.get(&bad.id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains("`faults.claim/wrong-type`"),
        "{err}"
    );
    // 205 requests went in far fewer calls: the refused one shared its calls.
    let calls = script_calls() - calls_before;
    assert!(calls < 50, "{calls} script calls for 205 claims");
}

/// Lease renewals made together share script calls too, each answered as if
/// alone: the holder's lease is extended, a renewal with a stale token is
/// fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_made_together_share_script_calls() {
    let (server, store) = server_and_store().await;
    let mut held = Vec::new();
    for i in 0..40 {
        let req = claim_request(&format!("renewed-{i}"));
        match store.claim(&req).await.unwrap() {
            Claimed::Acquired { record, .. } => held.push(record),
            other => panic!("{other:?}"),
        }
    }
    let script_calls = || script_calls(&server);
    let before = script_calls();
    let lease = Duration::from_secs(60);
    for _ in 0..5 {
        let renewals = futures_join_all(held.iter().enumerate().map(|(i, r)| {
            // Every tenth with a token that is not the holder's.
            let token = if i % 10 == 0 { r.token - 1 } else { r.token };
            store.renew(&r.id, Status::Pending, token, lease)
        }))
        .await;
        for (i, (r, renewed)) in held.iter().zip(renewals).enumerate() {
            let renewed = renewed.unwrap();
            if i % 10 == 0 {
                assert_eq!(renewed, None, "{}", r.id);
            } else {
                let until = renewed.unwrap();
                assert!(until > r.lease_until.unwrap(), "{}", r.id);
            }
        }
    }
    let calls = script_calls() - before;
    assert!(calls < 50, "{calls} script calls for 200 renewals");
    let fenced = store.get(&held[0].id).await.unwrap().unwrap();
    assert_eq!(
        fenced.lease_until, held[0].lease_until,
        "a fenced renewal wrote"
    );
}

/// A server turned into a read-only replica (as after a failover) makes
/// claims and transitions fail as unavailable, like any call to it, not as a
/// fault of one record; once it takes writes again, so does the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_is_unavailable_not_a_bad_record() {
    let (server, store) = server_and_store().await;
    let held = claim_request("before-failover");
    let token = match store.claim(&held).await.unwrap() {
        Claimed::Acquired { record, .. } => record.token,
        other => panic!("{other:?}"),
    };
    // A master on a loopback port nobody listens on: the server stays a
    // read-only replica of nothing.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nobody.local_addr().unwrap().port().to_string();
    drop(nobody);
    server.cli(&["REPLICAOF", "127.0.0.1", &port]);
    let reqs: Vec<ClaimRequest> = (0..10)
        .map(|i| claim_request(&format!("during-failover-{i}")))
        .collect();
    for claimed in futures_join_all(reqs.iter().map(|r| store.claim(r))).await {
        let err = claimed.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(err.to_string().contains("read only replica"), "{err}");
    }
    let mut done =
        tempox::record::Transition::new(held.id.clone(), Status::Pending, token, Status::Completed);
    done.output = Some(b"\"ok\"".to_vec().into());
    let err = store.apply(&done).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    server.cli(&["REPLICAOF", "NO", "ONE"]);
    assert!(store.apply(&done).await.unwrap());
    for req in &reqs {
        assert!(matches!(
            store.claim(req).await.unwrap(),
            Claimed::Acquired { .. }
        ));
    }
}

/// Requests whose callers stopped waiting while a call was stuck on the
/// server are never sent: not by the call's own sender, and not by a second
/// call started because many requests were waiting. Were they sent, each
/// would leave a claim that nobody holds, and its caller's retry would wait
/// out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_callers_gave_up_are_not_sent() {
    let (server, store) = server_and_store().await;
    let info = server.cli(&["info", "server"]);
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("INFO server names the process")
        .trim()
        .to_owned();
    let signal = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    };

    // The server stops answering; the first request goes alone and sticks.
    signal("-STOP");
    let give_up = Duration::from_millis(20);
    for i in 0..20 {
        let claim = claim_request(&format!("gave-up-{i}"));
        let answer = tokio::time::timeout(give_up, store.claim(&claim)).await;
        assert!(
            answer.is_err(),
            "gave-up-{i} was answered by a stopped server"
        );
    }
    // More than enough waited for a second call, but their callers are gone:
    // this one waits for the stuck call, alone. Polled once, it has made its
    // choice (to wait, or to send) before the server runs again.
    let claim = claim_request("last");
    let mut last = std::pin::pin!(store.claim(&claim));
    std::future::poll_fn(|cx| {
        assert!(last.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    signal("-CONT");
    assert!(matches!(last.await, Ok(Claimed::Acquired { .. })));
    let mut sent = Vec::new();
    for i in 0..20 {
        let id = claim_request(&format!("gave-up-{i}")).id;
        if store.get(&id).await.unwrap().is_some() {
            sent.push(i);
        }
    }
    assert_eq!(sent, [0], "only the request sent before its caller gave up");
}

/// Calls made from a runtime that is then left idle (a blocking wrapper
/// around `block_on`) hold up no other caller: a single-threaded caller's
/// requests are sent from the store's own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_runtime_left_idle_holds_up_nobody() {
    let (_server, store) = server_and_store().await;
    let elsewhere = store.clone();
    let idle = tokio::task::spawn_blocking(move || {
        let rt = current_thread();
        for i in 0..50 {
            let (a, b) = (
                claim_request(&format!("idle-a-{i}")),
                claim_request(&format!("idle-b-{i}")),
            );
            let (a, b) =
                rt.block_on(async { tokio::join!(elsewhere.claim(&a), elsewhere.claim(&b)) });
            a.unwrap();
            b.unwrap();
        }
        // Kept, not driven again.
        rt
    })
    .await
    .unwrap();
    claims_new_keys(&store, "here", 3).await;
    tokio::task::spawn_blocking(move || drop(idle))
        .await
        .unwrap();
}

/// A store called from single-threaded runtimes does their I/O on a thread of
/// its own: it keeps working after the runtime it connected from is gone, and
/// a reconnection made while serving a caller whose runtime is then left idle
/// holds up nobody.
#[test]
fn the_store_outlives_the_runtime_it_connected_from() {
    let server = RedisServer::start();
    let connected_on = current_thread();
    let store = connected_on.block_on(store_on(&server));
    drop(connected_on);

    let elsewhere = current_thread();
    let first = claim_request("after-its-runtime");
    elsewhere.block_on(async {
        assert!(matches!(
            store.claim(&first).await.unwrap(),
            Claimed::Acquired { .. }
        ));
        assert!(store.get(&first.id).await.unwrap().is_some());
    });
    // Drop every connection; the next calls, made from `elsewhere`, reconnect.
    server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    elsewhere.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.get(&first.id).await.is_err() {
            assert!(Instant::now() < deadline, "no reconnection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // `elsewhere` is now left idle; a third runtime's calls go through.
    current_thread().block_on(claims_new_keys(&store, "after-reconnect", 3));
    drop(elsewhere);
}

/// The same on multi-threaded runtimes, where a caller's requests are sent
/// from its own runtime: once the one the store connected from is shut down,
/// calls from another one reconnect and go on.
#[test]
fn the_store_outlives_the_multi_threaded_runtime_it_connected_from() {
    let server = RedisServer::start();
    let connected_on = multi_thread();
    let store = connected_on.block_on(store_on(&server));
    let first = claim_request("before-shutdown");
    connected_on.block_on(async { store.claim(&first).await.unwrap() });
    drop(connected_on);

    let elsewhere = multi_thread();
    elsewhere.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        for i in 0..20 {
            let req = claim_request(&format!("after-shutdown-{i}"));
            loop {
                match store.claim(&req).await {
                    Ok(claimed) => {
                        assert!(matches!(claimed, Claimed::Acquired { .. }));
                        break;
                    }
                    Err(e) => {
                        assert!(e.is_unavailable() || e.is_timeout(), "{e:?}");
                        assert!(Instant::now() < deadline, "no recovery: {e}");
                    }
                }
            }
        }
        assert!(store.get(&first.id).await.unwrap().is_some());
    });
}

/// A Redis Cluster store too outlives the runtime it connected from (its
/// connection lives on the store's own thread), and a store can be called
/// from no runtime at all.
#[test]
fn a_cluster_store_outlives_its_runtime_and_works_from_none() {
    let cluster = RedisCluster::shared();
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let connected_on = multi_thread();
    let store = connected_on
        .block_on(
            RedisStore::cluster_builder(&urls)
                .prefix("outlives")
                .response_timeout(Duration::from_secs(1))
                .connect(),
        )
        .unwrap();
    let first = claim_request("cluster-before-shutdown");
    connected_on.block_on(async { store.claim(&first).await.unwrap() });
    drop(connected_on);

    let elsewhere = multi_thread();
    elsewhere.block_on(claims_new_keys(&store, "cluster-after-shutdown", 10));
    drop(elsewhere);
    // No runtime at all: a plain thread polling by hand.
    let req = claim_request("from-no-runtime");
    assert!(matches!(
        block_on(store.claim(&req)).unwrap(),
        Claimed::Acquired { .. }
    ));
    assert!(block_on(store.get(&first.id)).unwrap().is_some());
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Claims `n` keys never seen (`<prefix>-<i>`) and checks each is acquired.
async fn claims_new_keys(store: &RedisStore, prefix: &str, n: usize) {
    for i in 0..n {
        let req = claim_request(&format!("{prefix}-{i}"));
        assert!(matches!(
            store.claim(&req).await.unwrap(),
            Claimed::Acquired { .. }
        ));
    }
}

/// Polls `future` to completion on this thread, with no runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Runs `futures` concurrently on this task, their outputs in order.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Connecting to nothing, and settings that cannot work, fail clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reports_unreachable_servers_and_bad_settings() {
    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = server.url();
    server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    let err = RedisStore::connect(&url).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("redis at 127.0.0.1:{}", server.port())),
        "{err}"
    );
    let bad = [
        RedisStore::builder(&url).buckets(0),
        RedisStore::builder(&url).prefix("a{b}"),
        RedisStore::builder(&url).response_timeout(Duration::ZERO),
        RedisStore::builder("http://nowhere"),
    ];
    for builder in bad {
        let err = builder.connect().await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    }
    // Waiting for replicas: at least one, for less than a whole call may take.
    for (builder, why) in [
        (
            RedisStore::builder(&url).wait_for_replicas(0, Duration::from_secs(1)),
            "0 replicas",
        ),
        (
            RedisStore::builder(&url).wait_for_replicas(1, Duration::from_micros(500)),
            "its timeout (500µs) must be at least 1ms",
        ),
        (
            RedisStore::builder(&url).wait_for_replicas(1, Duration::from_secs(5)),
            "its timeout (5s) must be at least 1ms and shorter than the response timeout (5s)",
        ),
    ] {
        let err = builder.connect().await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("`wait_for_replicas`") && text.contains(why),
            "{text}"
        );
    }
    // A malformed URL: what the client said, and what is expected.
    for (url, why) in [
        ("redis//127.0.0.1:6379", "Redis URL did not parse;"),
        ("redis://127.0.0.1:1/x", "Invalid database number;"),
    ] {
        let err = RedisStore::connect(url).await.map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
        let tls = if cfg!(feature = "redis-tls") {
            ", rediss://[user:password@]host[:port][/db]"
        } else {
            ""
        };
        assert_eq!(
            err.to_string(),
            format!(
                "invalid redis url `{url}`: {why} expected \
                 redis://[user:password@]host[:port][/db]{tls} or unix:///path/to/socket"
            )
        );
    }
}

/// A TLS server's certificate is checked against the authorities the store
/// trusts (the system's, or those it is given), and certificates given to
/// the builder are checked before anything is sent.
#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_servers_are_verified() {
    use crate::support::redis::Tls;
    let server = tokio::task::spawn_blocking(|| RedisServer::start_tls(Tls::new(false)))
        .await
        .unwrap();
    let url = server.url();
    let ca = server.tls().unwrap().ca.clone();
    let builder = |url: &str| {
        RedisStore::builder(url)
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(1))
    };
    // Not signed by an authority the store trusts: refused, and said why.
    let elsewhere = Tls::new(false).ca;
    for store in [
        builder(&url),
        builder(&url).tls_root_certificates(elsewhere),
    ] {
        let err = store.connect().await.map(|_| ()).unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("redis at 127.0.0.1:{}", server.port())),
            "{message}"
        );
        assert!(message.contains("invalid peer certificate"), "{message}");
        assert!(message.contains("`tls_root_certificates`"), "{message}");
    }
    // Signed by a trusted authority, but for another host: refused.
    let named = tokio::task::spawn_blocking(|| {
        RedisServer::start_tls(Tls::for_names(false, &["redis.internal"]))
    })
    .await
    .unwrap();
    let err = builder(&named.url())
        .tls_root_certificates(named.tls().unwrap().ca.clone())
        .connect()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    assert!(
        err.to_string().contains("not for the host of the url"),
        "{err}"
    );
    // Plain text to the TLS port is not answered.
    let plain = format!("redis://127.0.0.1:{}/", server.port());
    let err = builder(&plain).connect().await.map(|_| ()).unwrap_err();
    assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
    // Certificates that cannot work are refused before anything is sent.
    let bad = [
        (
            builder(&plain).tls_root_certificates(ca.clone()),
            "`tls_root_certificates`",
            "not a rediss:// url",
        ),
        (
            builder(&url).tls_root_certificates("no pem here"),
            "`tls_root_certificates`",
            "holds no certificate",
        ),
        (
            builder(&url).tls_root_certificates(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            "`tls_root_certificates`",
            "cannot be used as an authority",
        ),
        (
            builder(&url).tls_client_certificate(ca.clone(), "no key here"),
            "`tls_client_certificate`",
            "holds no private key",
        ),
        (
            builder(&url).tls_client_certificate(
                server.tls().unwrap().client_cert.clone(),
                Tls::new(false).client_key,
            ),
            "`tls_client_certificate`",
            "not the certificate's own",
        ),
    ];
    for (store, setting, why) in bad {
        let err = store.connect().await.map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains(setting), "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }
    // Trusting the server's authority: calls go through (schemes are
    // case-insensitive).
    let upper = builder(&url.replace("rediss://", "REDISS://"))
        .tls_root_certificates(ca.clone())
        .connect()
        .await;
    assert!(upper.is_ok(), "{:?}", upper.err());
    let store = builder(&url)
        .tls_root_certificates(ca)
        .connect()
        .await
        .unwrap();
    claim_seen_by_the_server(&store, &server, "over-tls").await;
}

/// Claims a new `key` through `store` and checks that `server` holds it.
async fn claim_seen_by_the_server(store: &RedisStore, server: &RedisServer, key: &str) {
    let req = claim_request(key);
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claimed::Acquired { .. }
    ));
    assert_eq!(
        server
            .cli(&["HGET", &store.record_key(&req.id), "status"])
            .trim(),
        "pending"
    );
}

/// A TLS server that asks clients for a certificate gets the one the store
/// is given, and refuses a store that has none or one it does not trust.
#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_servers_that_ask_for_a_client_certificate_get_one() {
    use crate::support::redis::Tls;
    let server = tokio::task::spawn_blocking(|| RedisServer::start_tls(Tls::new(true)))
        .await
        .unwrap();
    let tls = server.tls().unwrap().clone();
    let builder = || {
        RedisStore::builder(&server.url())
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(1))
            .tls_root_certificates(tls.ca.clone())
    };
    let stranger = Tls::new(false);
    for (store, hint) in [
        (builder(), "give one with `tls_client_certificate`"),
        (
            builder().tls_client_certificate(stranger.client_cert, stranger.client_key),
            "must trust the authority of the one given to `tls_client_certificate`",
        ),
    ] {
        let err = store.connect().await.map(|_| ()).unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(err.to_string().contains(hint), "{err}");
    }
    let store = builder()
        .tls_client_certificate(tls.client_cert, tls.client_key)
        .connect()
        .await
        .unwrap();
    let req = claim_request("client-certificate");
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claimed::Acquired { .. }
    ));
    assert!(store.get(&req.id).await.unwrap().is_some());
}

/// Tokens are computed on decimal strings inside the scripts, so they stay
/// exact where Lua's numbers (doubles) are not: above 2^53, up to `u64::MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_exact_beyond_what_lua_numbers_hold() {
    let (server, store) = server_and_store().await;
    let mut req = claim_request("big-token");
    req.lease = Duration::from_millis(1);
    store.claim(&req).await.unwrap();
    let key = store.record_key(&req.id);
    for (stored, next) in [
        ("9007199254740993", 9_007_199_254_740_994),
        ("18446744073709551614", u64::MAX),
        ("18446744073709551615", u64::MAX),
    ] {
        server.cli(&["HSET", &key, "token", stored]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        match store.claim(&req).await.unwrap() {
            Claimed::Acquired { record, .. } => assert_eq!(record.token, next, "after {stored}"),
            other => panic!("expected a takeover, got {other:?}"),
        }
    }
}

/// Recovery issue, item 10: the server takes a claim but its answer comes
/// after the caller stopped waiting (here: queued behind a script that keeps
/// the server busy). No body ran under it, so it is given back: the key is
/// free again, and its retry is not parked as `outcome_unknown` after the
/// lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_given_back() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let patient = store_on(&server).await;
    let hasty = RedisStore::builder(&server.url())
        .response_timeout(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let request = |key: &str| ClaimRequest {
        id: RecordId::new("faults.pay", &Key::new(key).unwrap()),
        kind: Kind::NonIdempotent,
        fingerprint: Fingerprint::from_bytes([4; 16]),
        input: b"[]".to_vec().into(),
        lease: Duration::from_secs(30),
        on_expired: OnExpired::MarkUnknown,
        workflow: None,
        step: None,
    };
    // A script that holds the server for 600 ms.
    let busy = {
        let cli = server.cli_command();
        std::thread::spawn(move || {
            let script = "local s = redis.call('TIME') \
                local t0 = s[1] * 1000000 + s[2] \
                repeat local t = redis.call('TIME') until t[1] * 1000000 + t[2] - t0 > 600000 \
                return 1";
            let out = std::process::Command::new(&cli[0])
                .args(&cli[1..])
                .args(["EVAL", script, "0"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let keys: Vec<String> = (0..5).map(|i| format!("lost-{i}")).collect();
    for key in &keys {
        let err = hasty.claim(&request(key)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    }
    tokio::task::spawn_blocking(move || busy.join().unwrap())
        .await
        .unwrap();
    let mut given_back = 0;
    for key in &keys {
        let id = request(key).id;
        // The first was sent and taken by the server, then given back from
        // a task of the store; those queued behind it when their callers
        // gave up were never sent.
        let mut status = Some(Status::Pending);
        for _ in 0..500 {
            status = patient.get(&id).await.unwrap().map(|r| r.status);
            if status != Some(Status::Pending) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match status {
            Some(Status::Released) => given_back += 1,
            None => {}
            other => panic!("{key}: {other:?}"),
        }
        // Its retry takes the key: nothing ran, nothing is parked.
        match patient.claim(&request(key)).await.unwrap() {
            Claimed::Acquired { previous, .. } => assert_eq!(previous, status, "{key}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(given_back >= 1, "no claim reached the busy server");
}

/// Damaged-data issue, item 1: a damaged time field never frees a key. An
/// end of retention of `never`, `""` or `-1` on a completed record is not
/// "retention passed" (the next call would run the body again), and a lease
/// end of `soon` or `-5` on a pending one is not "run out" (a live holder
/// would be taken over): the claim is refused as a corrupt record, naming
/// it and the field, and nothing is written; a pass of retention leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_time_field_never_frees_a_key() {
    let (server, store) = server_and_store().await;
    let cases = [
        ("expires_at", "never", true),
        ("expires_at", "", true),
        ("expires_at", "-1", true),
        ("lease_until", "soon", false),
        ("lease_until", "-5", false),
    ];
    for (i, (field, value, completed)) in cases.into_iter().enumerate() {
        let req = claim_request(&format!("damaged-{i}"));
        let Claimed::Acquired { record, .. } = store.claim(&req).await.unwrap() else {
            panic!("not acquired");
        };
        if completed {
            let mut t = tempox::record::Transition::new(
                record.id.clone(),
                Status::Pending,
                record.token,
                Status::Completed,
            );
            t.output = Some(b"7".to_vec().into());
            t.retention = Some(Duration::from_secs(3600));
            assert!(store.apply(&t).await.unwrap());
        }
        let key = store.record_key(&req.id);
        server.cli(&["HSET", &key, field, value]);
        let before = server.cli(&["HGETALL", &key]);
        let err = store.claim(&req).await.unwrap_err();
        assert_eq!(
            err.kind(),
            StoreErrorKind::Corrupt,
            "{field}={value:?}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("`{}`", req.id)) && text.contains(&format!("field `{field}`")),
            "{text}"
        );
        assert!(text.contains("nothing was written"), "{text}");
        assert_eq!(store.expire(1000).await.unwrap(), 0);
        assert_eq!(server.cli(&["HGETALL", &key]), before, "{field}={value:?}");
    }
}
