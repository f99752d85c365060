//! Invariants 1–4 and 8 of DESIGN.md on `MemoryStore` (5 is in `compensation`).

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use tempox::clock::ManualClock;
use tempox::store::MemoryStore;
use tempox::{Error, Fingerprint, RecordId, Status, idempotent, non_idempotent};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::common::{Order, PAST_LEASE, TestError, order, runtime};
use crate::support::{Outage, only_record, until};

mod at_most_once {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);
    pub static OPEN: Semaphore = Semaphore::const_new(0);

    #[idempotent(key = id)]
    pub async fn slow(id: String) -> Result<u32, TestError> {
        RUNS.fetch_add(1, SeqCst);
        OPEN.acquire().await.expect("open").forget();
        Ok(7)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv1_at_most_once_per_key_with_100_concurrent_callers() {
    use at_most_once::*;
    let rt = runtime(MemoryStore::new());
    let mut calls = JoinSet::new();
    for _ in 0..100 {
        let rt = rt.clone();
        calls.spawn(async move { rt.scope(slow("one-key".into())).await });
    }
    // Every duplicate is waiting while the first body is still running.
    until(|| RUNS.load(SeqCst) == 1 && rt.counters().in_flight_waits == 99).await;
    OPEN.add_permits(1);
    let results = calls.join_all().await;
    assert!(results.iter().all(|r| matches!(r, Ok(7))), "{results:?}");
    assert_eq!(RUNS.load(SeqCst), 1, "the body ran more than once");
    let c = rt.counters();
    assert_eq!((c.executions, c.replays), (1, 99));
}

mod key_reuse {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = order.id)]
    pub async fn place(order: &Order) -> Result<u64, TestError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(order.cents)
    }

    #[idempotent]
    pub async fn add(a: u64, b: u64) -> Result<u64, TestError> {
        Ok(a + b)
    }
}

#[tokio::test]
async fn inv2_same_key_other_arguments_is_key_reuse() {
    use key_reuse::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    rt.scope(async {
        assert_eq!(place(&order("o-1", 100)).await.unwrap(), 100);
        assert_eq!(place(&order("o-1", 100)).await.unwrap(), 100);
        let err = place(&order("o-1", 999)).await.unwrap_err();
        assert!(
            matches!(err.tempox(), Some(Error::KeyReuse { key, .. }) if key == "o-1"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "key `o-1` of `{}::key_reuse::place` was already used with different arguments",
                module_path!()
            )
        );
    })
    .await;
    assert_eq!(RUNS.load(SeqCst), 1);
    assert_eq!(rt.counters().key_reuses, 1);
    // The first request's record is untouched.
    let r = only_record(&store, &format!("{}::key_reuse::place", module_path!())).await;
    assert_eq!(r.output.as_deref(), Some(&b"100"[..]));
}

#[tokio::test]
async fn default_key_is_the_fingerprint_of_all_arguments() {
    use key_reuse::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    rt.scope(async {
        assert_eq!(add(2, 3).await.unwrap(), 5);
        assert_eq!(add(3, 2).await.unwrap(), 5);
    })
    .await;
    let op = format!("{}::key_reuse::add", module_path!());
    let expected = Fingerprint::of(&(2u64, 3u64)).unwrap().to_key();
    assert_eq!(expected.as_str(), "c5b665c920fd687b20064f0a00c1530d");
    let r = rt
        .record(&RecordId::new(&op, &expected))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, Status::Completed);
    assert_eq!(&r.input[..], b"[2,3]");
    assert_eq!(
        rt.counters().replays,
        0,
        "different arguments are different keys"
    );
}

mod fencing {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);
    pub static STARTED: Notify = Notify::const_new();
    pub static OPEN: Semaphore = Semaphore::const_new(0);

    #[idempotent(key = id)]
    pub async fn long(id: String) -> Result<u32, TestError> {
        let n = RUNS.fetch_add(1, SeqCst) + 1;
        if n == 1 {
            STARTED.notify_one();
            OPEN.acquire().await.expect("open").forget();
        }
        Ok(n)
    }
}

#[tokio::test]
async fn inv3_a_stale_holder_cannot_complete() {
    use fencing::*;
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let rt = runtime(store.clone());
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.scope(long("k".into())).await }
    });
    STARTED.notified().await;
    let op = format!("{}::fencing::long", module_path!());
    let stale = only_record(&store, &op).await;
    clock.advance(PAST_LEASE);
    // The lease ran out: a new caller takes over with a newer token and completes.
    assert_eq!(rt.scope(long("k".into())).await.unwrap(), 2);
    OPEN.add_permits(1);
    let err = first.await.unwrap().unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::Fenced { token, .. }) if *token == stale.token),
        "{err:?}"
    );
    let r = only_record(&store, &op).await;
    assert_eq!(
        (r.status, r.output.as_deref()),
        (Status::Completed, Some(&b"2"[..]))
    );
    assert!(r.token > stale.token);
    assert_eq!(r.attempts, 2);
    let c = rt.counters();
    assert_eq!((c.takeovers, c.fenced), (1, 1));
}

mod write_ahead {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = id)]
    pub async fn observe(id: String) -> Result<String, TestError> {
        RUNS.fetch_add(1, SeqCst);
        let rt = tempox::Runtime::current().expect("runtime in scope");
        let op = concat!(module_path!(), "::observe");
        let r = rt
            .record(&RecordId::parse(&format!("{op}/{id}")).unwrap())
            .await?;
        Ok(r.map(|r| r.status.to_string()).unwrap_or_default())
    }

    pub static OUTAGE: std::sync::OnceLock<Outage<MemoryStore>> = std::sync::OnceLock::new();
    pub static DIES: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = id)]
    pub async fn store_dies_meanwhile(id: String) -> Result<u32, TestError> {
        let n = DIES.fetch_add(1, SeqCst) + 1;
        if let Some(outage) = OUTAGE.get() {
            outage.set_down(n == 1);
        }
        Ok(n)
    }
}

#[tokio::test]
async fn inv4_the_claim_is_written_before_the_body_runs() {
    use write_ahead::*;
    let rt = runtime(MemoryStore::new());
    let seen = rt.scope(observe("w-1".into())).await.unwrap();
    assert_eq!(seen, "pending");
}

#[tokio::test]
async fn inv4_an_unrecorded_outcome_stays_pending_and_is_reported() {
    use write_ahead::*;
    let clock = ManualClock::new();
    let memory = MemoryStore::with_clock(clock.clone());
    let outage = Outage::new(memory.clone());
    OUTAGE.set(outage.clone()).unwrap();
    let rt = runtime(outage.clone());
    let err = rt
        .scope(store_dies_meanwhile("w-2".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::OutcomeNotRecorded { .. })),
        "{err:?}"
    );
    let op = format!("{}::write_ahead::store_dies_meanwhile", module_path!());
    assert_eq!(only_record(&memory, &op).await.status, Status::Pending);

    // While the store is down, nothing runs: the claim cannot be written.
    outage.set_down(true);
    let err = rt
        .scope(store_dies_meanwhile("w-3".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::Store { source }) if source.is_unavailable()),
        "{err:?}"
    );
    assert_eq!(DIES.load(SeqCst), 1);
    outage.set_down(false);

    // After the lease, the idempotent call is simply run again.
    clock.advance(PAST_LEASE);
    assert_eq!(
        rt.scope(store_dies_meanwhile("w-2".into())).await.unwrap(),
        2
    );
    assert_eq!(only_record(&memory, &op).await.status, Status::Completed);
}

mod errors {
    use super::*;

    pub static FLAKY: AtomicU32 = AtomicU32::new(0);
    pub static CACHED: AtomicU32 = AtomicU32::new(0);
    pub static SENDS: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = id)]
    pub async fn flaky(id: String) -> Result<u32, TestError> {
        let n = FLAKY.fetch_add(1, SeqCst) + 1;
        if n == 1 {
            Err(TestError::Boom(n))
        } else {
            Ok(n)
        }
    }

    #[idempotent(key = id, cache_errors)]
    pub async fn cached(id: String) -> Result<u32, TestError> {
        CACHED.fetch_add(1, SeqCst);
        Err(TestError::Declined)
    }

    #[non_idempotent(key = id, compensate = noop)]
    pub async fn send(id: String, fail: Option<TestError>) -> Result<u32, TestError> {
        let n = SENDS.fetch_add(1, SeqCst) + 1;
        match fail {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }
}

#[tokio::test]
async fn inv8_an_error_releases_the_key() {
    use errors::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    let err = rt.scope(flaky("e-1".into())).await.unwrap_err();
    assert!(matches!(err, TestError::Boom(1)));
    let op = format!("{}::errors::flaky", module_path!());
    let r = only_record(&store, &op).await;
    assert_eq!(
        (r.status, r.error.as_deref()),
        (Status::Released, Some("boom 1"))
    );
    assert_eq!(rt.scope(flaky("e-1".into())).await.unwrap(), 2);
    // `attempts` counts the runs since an outcome was last recorded (the
    // released error was one): a crash loop is told from a flaky body.
    assert_eq!(only_record(&store, &op).await.attempts, 1);
}

#[tokio::test]
async fn inv8_cache_errors_replays_the_error() {
    use errors::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    for _ in 0..3 {
        let err = rt.scope(cached("e-2".into())).await.unwrap_err();
        assert!(matches!(err, TestError::Declined), "{err:?}");
    }
    assert_eq!(CACHED.load(SeqCst), 1);
    let r = only_record(&store, &format!("{}::errors::cached", module_path!())).await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(rt.counters().replays, 2);
}

#[tokio::test]
async fn inv8_non_idempotent_errors_mean_no_effect_unless_outcome_unknown() {
    use errors::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    let op = format!("{}::errors::send", module_path!());
    // An ordinary error: no effect, the key is free again.
    assert!(matches!(
        rt.scope(send("s-1".into(), Some(TestError::Declined)))
            .await,
        Err(TestError::Declined)
    ));
    let r = rt
        .record(&RecordId::parse(&format!("{op}/s-1")).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, Status::Released);
    // The error says the outcome is unknown: parked, never run again.
    let err = rt
        .scope(send("s-2".into(), Some(TestError::Timeout)))
        .await
        .unwrap_err();
    assert!(matches!(err, TestError::Timeout));
    let id = RecordId::parse(&format!("{op}/s-2")).unwrap();
    assert_eq!(
        rt.record(&id).await.unwrap().unwrap().status,
        Status::OutcomeUnknown
    );
    let again = rt
        .scope(send("s-2".into(), Some(TestError::Timeout)))
        .await
        .unwrap_err();
    assert!(
        matches!(again.tempox(), Some(Error::OutcomeUnknown { .. })),
        "{again:?}"
    );
    let parked = rt.dead_letters().await.unwrap();
    assert_eq!(parked.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&id]);
    assert_eq!(rt.counters().dead_letters, 1);
}
