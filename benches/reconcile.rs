//! Reconciler benchmark, printed as a table.
//!
//! 1. A pass costs what is due, not what is stored: the time to reconcile
//!    `--due` records (expired leases) in a store holding only them, and in one
//!    that also holds many final records; the ratio should stay ≤ 1.5.
//! 2. Compensations per second with 1, 2 and 4 reconcilers sharing a store.
//!
//! ```text
//! cargo bench --bench reconcile                               # memory and SQLite
//! cargo bench --features redis --bench reconcile -- --store all
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tempox::clock::ManualClock;
use tempox::record::{ClaimRequest, Claimed, LeaseChange, OnExpired, Transition};
use tempox::store::{MemoryStore, Query, SqliteStore, Store};
use tempox::{Fingerprint, Key, Kind, RecordId, Runtime, Status, idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(name = "bench.undo")]
async fn undo(n: &u64) -> Result<(), BenchError> {
    std::hint::black_box(n);
    Ok(())
}

#[non_idempotent(name = "bench.effect", compensate = undo)]
async fn effect(n: u64) -> Result<u64, BenchError> {
    Ok(n)
}

/// A store to measure, and how to let its leases run out.
struct Subject {
    store: Arc<dyn Store>,
    clock: Option<ManualClock>,
    _keep: Box<dyn std::any::Any>,
}

impl Subject {
    async fn pass(&self, d: Duration) {
        match &self.clock {
            Some(c) => c.advance(d),
            None => tokio::time::sleep(d).await,
        }
    }
}

async fn make(kind: &str) -> Subject {
    let clock = ManualClock::new();
    match kind {
        "memory" => Subject {
            store: Arc::new(MemoryStore::with_clock(clock.clone())),
            clock: Some(clock),
            _keep: Box::new(()),
        },
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::builder(dir.path().join("r.db"))
                .clock(clock.clone())
                .open()
                .unwrap();
            Subject {
                store: Arc::new(store),
                clock: Some(clock),
                _keep: Box::new(dir),
            }
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let server = tokio::task::spawn_blocking(redis_server::RedisServer::start)
                .await
                .unwrap();
            let store = tempox::store::RedisStore::connect(&server.url())
                .await
                .unwrap();
            Subject {
                store: Arc::new(store),
                clock: None,
                _keep: Box::new(server),
            }
        }
        other => panic!("unknown store {other}; use memory, sqlite, redis or all"),
    }
}

fn request(prefix: &str, n: u64, lease: Duration) -> ClaimRequest {
    let key = Key::new(format!("{prefix}-{n}")).unwrap();
    ClaimRequest {
        id: RecordId::new("bench.op", &key),
        kind: Kind::Idempotent,
        fingerprint: Fingerprint::of(&n).unwrap(),
        input: serde_json::to_vec(&[n]).unwrap().into(),
        lease,
        on_expired: OnExpired::TakeOver,
        workflow: None,
        step: None,
    }
}

/// Writes `count` records from 256 tasks: final ones (completed, kept a week),
/// or claims with a 1 ms lease (due once it runs out).
async fn fill(store: &Arc<dyn Store>, prefix: &str, count: u64, finished: bool) {
    let tasks: Vec<_> = (0..256u64)
        .map(|t| {
            let store = store.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let mut n = t;
                while n < count {
                    let Claimed::Acquired { record, .. } = store
                        .claim(&request(&prefix, n, Duration::from_millis(1)))
                        .await
                        .unwrap()
                    else {
                        panic!("not acquired")
                    };
                    if finished {
                        let mut t = Transition::new(
                            record.id,
                            Status::Pending,
                            record.token,
                            Status::Completed,
                        );
                        t.output = Some(b"1".to_vec().into());
                        t.retention = Some(Duration::from_secs(7 * 86_400));
                        store.transition(&t).await.unwrap();
                    }
                    n += 256;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Seconds to reconcile every due record.
async fn drain(rt: &Runtime, expected: usize) -> f64 {
    let r = rt.reconciler().batch(1_000);
    let start = Instant::now();
    let mut handled = 0;
    while handled < expected {
        let report = r.run_once().await.unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors.first());
        if report.handled() == 0 {
            break;
        }
        handled += report.handled();
    }
    assert_eq!(handled, expected, "not every due record was reconciled");
    start.elapsed().as_secs_f64()
}

async fn scan_cost(kind: &str, due: u64, retained: u64) {
    let mut seconds = Vec::new();
    for stored in [due, retained] {
        let s = make(kind).await;
        fill(&s.store, "final", stored - due, true).await;
        fill(&s.store, "due", due, false).await;
        s.pass(Duration::from_millis(50)).await;
        let rt = Runtime::builder()
            .shared_store(s.store.clone())
            .build()
            .unwrap();
        let secs = drain(&rt, due as usize).await;
        println!(
            "{kind:<8} {stored:>10} {due:>8} {secs:>10.3} {:>12.0}",
            due as f64 / secs
        );
        seconds.push(secs);
    }
    let ratio = seconds[1] / seconds[0];
    let verdict = if ratio <= 1.5 {
        "<= 1.5 ok"
    } else {
        "<= 1.5 MISSED"
    };
    println!("{kind:<8} ratio {retained} stored / {due} stored: {ratio:.2}  target {verdict}");
}

async fn compensation_rate(kind: &str, count: u64) {
    for reconcilers in [1usize, 2, 4] {
        let s = make(kind).await;
        let rt = Runtime::builder()
            .shared_store(s.store.clone())
            .lease(Duration::from_millis(50))
            .build()
            .unwrap();
        rt.scope(async {
            let tasks: Vec<_> = (0..64u64)
                .map(|t| {
                    let rt = rt.clone();
                    tokio::spawn(async move {
                        rt.scope(async {
                            let mut n = t;
                            while n < count {
                                effect(n).await.unwrap();
                                n += 64;
                            }
                        })
                        .await
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await;
        // Every call is compensated as if its compensator had died holding it.
        let mut q = Query {
            op: Some("bench.effect".into()),
            limit: 10_000,
            ..Query::default()
        };
        loop {
            let page = s.store.list(&q).await.unwrap();
            q.after = page.last().map(|r| r.id.clone());
            let done = page.len() < q.limit;
            for r in page {
                let mut t = Transition::new(r.id, Status::Completed, r.token, Status::Compensating);
                t.lease = LeaseChange::Acquire(Duration::from_millis(1));
                s.store.transition(&t).await.unwrap();
            }
            if done {
                break;
            }
        }
        s.pass(Duration::from_millis(50)).await;
        let start = Instant::now();
        let runs: Vec<_> = (0..reconcilers)
            .map(|_| {
                let r = rt.reconciler().batch(256);
                let store = s.store.clone();
                tokio::spawn(async move {
                    let mut compensated = 0;
                    loop {
                        compensated += r.run_once().await.unwrap().compensated.len();
                        if store.due(1).await.unwrap().is_empty() {
                            return compensated;
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for run in runs {
            total += run.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(total as u64, count, "every compensation ran exactly once");
        println!(
            "{kind:<8} {reconcilers:>11} {count:>8} {secs:>10.3} {:>12.0}",
            count as f64 / secs
        );
    }
}

fn main() {
    let mut stores = vec!["memory".to_owned(), "sqlite".to_owned()];
    let mut due = 10_000u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => stores = vec![it.next().expect("--store needs a value")],
            "--due" => {
                due = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--due needs a number")
            }
            "--bench" => {}
            other => {
                panic!("unknown argument {other}; use --store memory|sqlite|redis|all, --due N")
            }
        }
    }
    if stores == ["all"] {
        stores = vec!["memory".into(), "sqlite".into(), "redis".into()];
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        println!("pass cost: seconds to reconcile every due record (expired leases, released)");
        println!(
            "{:<8} {:>10} {:>8} {:>10} {:>12}",
            "store", "stored", "due", "seconds", "due/s"
        );
        for kind in &stores {
            let retained = if kind == "redis" { 100_000 } else { 1_000_000 };
            scan_cost(kind, due, retained).await;
        }
        println!("\ncompensations per second (crashed compensations taken over after their lease)");
        println!(
            "{:<8} {:>11} {:>8} {:>10} {:>12}",
            "store", "reconcilers", "records", "seconds", "per second"
        );
        for kind in &stores {
            compensation_rate(kind, 2_000).await;
        }
    });
}
