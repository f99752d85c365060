//! The call path: in-flight duplicates, retries, lease renewal, cancellation,
//! probes, retention, malformed keys, and the runtime itself.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use tempox::clock::ManualClock;
use tempox::store::{MemoryStore, Store};
use tempox::{Error, KeyError, RecordId, Runtime, Status, idempotent, non_idempotent};
use tokio::sync::{Notify, Semaphore};

use crate::common::{PAST_LEASE, TestError, runtime};
use crate::support::only_record;

mod in_flight {
    use super::*;

    pub static STARTED: Notify = Notify::const_new();
    pub static OPEN: Semaphore = Semaphore::const_new(0);

    #[idempotent(key = id, in_flight = reject)]
    pub async fn rejecting(id: String) -> Result<u32, TestError> {
        STARTED.notify_one();
        OPEN.acquire().await.expect("open").forget();
        Ok(1)
    }

    pub static WAIT_STARTED: Notify = Notify::const_new();
    pub static WAIT_OPEN: Semaphore = Semaphore::const_new(0);

    #[idempotent(key = id)]
    pub async fn waiting(id: String) -> Result<u32, TestError> {
        WAIT_STARTED.notify_one();
        WAIT_OPEN.acquire().await.expect("open").forget();
        Ok(1)
    }
}

#[tokio::test]
async fn in_flight_reject_fails_at_once() {
    use in_flight::*;
    let rt = runtime(MemoryStore::new());
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.scope(rejecting("r".into())).await }
    });
    STARTED.notified().await;
    let err = rt.scope(rejecting("r".into())).await.unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::InFlight { key, .. }) if key == "r"),
        "{err:?}"
    );
    assert_eq!(rt.counters().in_flight_rejections, 1);
    OPEN.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    // Once recorded, the duplicate replays.
    assert_eq!(rt.scope(rejecting("r".into())).await.unwrap(), 1);
}

#[tokio::test]
async fn in_flight_wait_is_bounded() {
    use in_flight::*;
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .in_flight_wait(Duration::from_millis(30))
        .build()
        .unwrap();
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.scope(waiting("w".into())).await }
    });
    WAIT_STARTED.notified().await;
    let err = rt.scope(waiting("w".into())).await.unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::InFlight { .. })),
        "{err:?}"
    );
    let c = rt.counters();
    assert_eq!((c.in_flight_waits, c.in_flight_rejections), (1, 1));
    WAIT_OPEN.add_permits(1);
    first.await.unwrap().unwrap();
}

mod retry {
    use super::*;

    pub static FLAKY: AtomicU32 = AtomicU32::new(0);
    pub static DECLINED: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = id, retry = 3)]
    pub async fn flaky(id: String) -> Result<u32, TestError> {
        let n = FLAKY.fetch_add(1, SeqCst) + 1;
        if n < 3 {
            Err(TestError::Boom(n))
        } else {
            Ok(n)
        }
    }

    #[idempotent(key = id, retry = 3)]
    pub async fn declined(id: &str) -> Result<u32, TestError> {
        DECLINED.fetch_add(1, SeqCst);
        Err(TestError::Declined)
    }
}

#[tokio::test]
async fn retry_runs_a_failing_idempotent_body_again_with_backoff() {
    use retry::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    assert_eq!(rt.scope(flaky("f".into())).await.unwrap(), 3);
    assert_eq!(FLAKY.load(SeqCst), 3);
    let c = rt.counters();
    assert_eq!((c.executions, c.retries), (3, 2));
    let r = only_record(&store, &format!("{}::retry::flaky", module_path!())).await;
    assert_eq!(
        (r.status, r.attempts),
        (Status::Completed, 1),
        "retries hold one claim"
    );
}

#[tokio::test]
async fn retry_stops_at_an_error_that_is_not_retryable() {
    use retry::*;
    let rt = runtime(MemoryStore::new());
    assert!(matches!(
        rt.scope(declined("d")).await,
        Err(TestError::Declined)
    ));
    assert_eq!(DECLINED.load(SeqCst), 1);
    assert_eq!(rt.counters().retries, 0);
}

mod heartbeat {
    use super::*;

    pub static STARTED: Notify = Notify::const_new();
    pub static OPEN: Semaphore = Semaphore::const_new(0);

    #[idempotent(key = id, in_flight = reject, lease = "60ms")]
    pub async fn long(id: String) -> Result<u32, TestError> {
        STARTED.notify_one();
        OPEN.acquire().await.expect("open").forget();
        Ok(1)
    }
}

#[tokio::test]
async fn a_running_body_keeps_renewing_its_lease() {
    use heartbeat::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.scope(long("h".into())).await }
    });
    STARTED.notified().await;
    let claimed = only_record(&store, &format!("{}::heartbeat::long", module_path!())).await;
    // Several leases' worth of wall-clock time pass while the body runs: the lease
    // is what is under test here, so time must really pass.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = rt.scope(long("h".into())).await.unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::InFlight { .. })),
        "taken over: {err:?}"
    );
    let renewed = only_record(&store, &format!("{}::heartbeat::long", module_path!())).await;
    assert!(renewed.lease_until > claimed.lease_until);
    assert_eq!(renewed.token, claimed.token);
    OPEN.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
}

mod cancel {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);
    pub static CHARGES: AtomicU32 = AtomicU32::new(0);
    pub static PROBED: AtomicU32 = AtomicU32::new(0);
    pub static STEP_STARTED: Notify = Notify::const_new();
    pub static CHARGE_STARTED: Notify = Notify::const_new();
    pub static PAY_STARTED: Notify = Notify::const_new();
    pub static NEVER: Semaphore = Semaphore::const_new(0);

    #[idempotent(key = id)]
    pub async fn step(id: String) -> Result<u32, TestError> {
        let n = RUNS.fetch_add(1, SeqCst) + 1;
        if n == 1 {
            STEP_STARTED.notify_one();
            let _ = NEVER.acquire().await;
        }
        Ok(n)
    }

    #[non_idempotent(key = id, compensate = noop)]
    pub async fn charge(id: String) -> Result<u32, TestError> {
        let n = CHARGES.fetch_add(1, SeqCst) + 1;
        CHARGE_STARTED.notify_one();
        let _ = NEVER.acquire().await;
        Ok(n)
    }

    pub static PAYS: AtomicU32 = AtomicU32::new(0);

    /// Looks the payment up "at the provider": it went through as payment 41.
    pub async fn find_payment(id: &String) -> Result<Option<u32>, TestError> {
        PROBED.fetch_add(1, SeqCst);
        Ok((id == "p-happened").then_some(41))
    }

    #[non_idempotent(key = id, compensate = noop, probe = find_payment)]
    pub async fn pay(id: String) -> Result<u32, TestError> {
        let n = PAYS.fetch_add(1, SeqCst) + 1;
        if n <= 2 {
            PAY_STARTED.notify_one();
            let _ = NEVER.acquire().await;
        }
        Ok(100 + n)
    }
}

/// Starts `call` in a task, waits until its body runs, then aborts it.
async fn crash_mid_body<F>(rt: &Runtime, started: &Notify, call: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + std::fmt::Debug,
{
    let rt = rt.clone();
    let task = tokio::spawn(async move { rt.scope(call).await });
    started.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn a_dropped_idempotent_call_stays_pending_then_runs_again() {
    use cancel::*;
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let rt = runtime(store.clone());
    crash_mid_body(&rt, &STEP_STARTED, step("c-1".into())).await;
    let op = format!("{}::cancel::step", module_path!());
    assert_eq!(only_record(&store, &op).await.status, Status::Pending);
    clock.advance(PAST_LEASE);
    assert_eq!(rt.scope(step("c-1".into())).await.unwrap(), 2);
    assert_eq!(rt.counters().takeovers, 1);
}

#[tokio::test]
async fn a_dropped_non_idempotent_call_without_probe_is_outcome_unknown() {
    use cancel::*;
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let rt = runtime(store.clone());
    crash_mid_body(&rt, &CHARGE_STARTED, charge("c-2".into())).await;
    let op = format!("{}::cancel::charge", module_path!());
    assert_eq!(only_record(&store, &op).await.status, Status::Pending);
    clock.advance(PAST_LEASE);
    let err = rt.scope(charge("c-2".into())).await.unwrap_err();
    assert!(
        matches!(err.tempox(), Some(Error::OutcomeUnknown { key, .. }) if key == "c-2"),
        "{err:?}"
    );
    assert_eq!(CHARGES.load(SeqCst), 1, "never run a second time");
    let r = only_record(&store, &op).await;
    assert_eq!(r.status, Status::OutcomeUnknown);
    assert_eq!(rt.dead_letters().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_probe_settles_a_dropped_non_idempotent_call() {
    use cancel::*;
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let rt = runtime(store.clone());
    // The provider has the payment: its output is recorded, the body is not run.
    crash_mid_body(&rt, &PAY_STARTED, pay("p-happened".into())).await;
    clock.advance(PAST_LEASE);
    assert_eq!(rt.scope(pay("p-happened".into())).await.unwrap(), 41);
    // The provider never saw it: run the body.
    crash_mid_body(&rt, &PAY_STARTED, pay("p-lost".into())).await;
    clock.advance(PAST_LEASE);
    assert_eq!(rt.scope(pay("p-lost".into())).await.unwrap(), 103);
    assert_eq!(PROBED.load(SeqCst), 2);
    assert_eq!(PAYS.load(SeqCst), 3);
    let op = format!("{}::cancel::pay", module_path!());
    let happened = rt
        .record(&RecordId::parse(&format!("{op}/p-happened")).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (happened.status, happened.output.as_deref()),
        (Status::Completed, Some(&b"41"[..]))
    );
    // Replays come from the record, not the probe.
    assert_eq!(rt.scope(pay("p-happened".into())).await.unwrap(), 41);
    assert_eq!(PROBED.load(SeqCst), 2);
}

mod retention {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = id, retention = "1h")]
    pub async fn kept_an_hour(id: String) -> Result<u32, TestError> {
        Ok(RUNS.fetch_add(1, SeqCst) + 1)
    }
}

#[tokio::test]
async fn records_past_retention_are_forgotten() {
    use retention::*;
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let rt = runtime(store.clone());
    assert_eq!(rt.scope(kept_an_hour("t".into())).await.unwrap(), 1);
    clock.advance(Duration::from_secs(59 * 60));
    assert_eq!(
        rt.scope(kept_an_hour("t".into())).await.unwrap(),
        1,
        "replayed within retention"
    );
    assert_eq!(store.expire(100).await.unwrap(), 0);
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(store.expire(100).await.unwrap(), 1);
    assert!(store.is_empty());
    assert_eq!(
        rt.scope(kept_an_hour("t".into())).await.unwrap(),
        2,
        "a new call runs"
    );
}

mod keys {
    use super::*;

    pub static RUNS: AtomicU32 = AtomicU32::new(0);

    #[idempotent(key = id)]
    pub async fn keyed(id: &str) -> Result<(), TestError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn malformed_keys_are_invalid_key_and_write_nothing() {
    use keys::*;
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    let long = "k".repeat(513);
    let cases: [(&str, KeyError); 3] = [
        ("", KeyError::Empty),
        (&long, KeyError::TooLong { len: 513 }),
        ("a\u{7}b", KeyError::ControlCharacter { offset: 1 }),
    ];
    for (key, expected) in cases {
        let err = rt.scope(keyed(key)).await.unwrap_err();
        match err.tempox() {
            Some(e @ Error::InvalidKey { reason, .. }) => {
                assert_eq!(reason, &expected);
                // Its reason is in its message, so not in the chain again.
                assert!(e.to_string().ends_with(&reason.to_string()), "{e}");
                assert!(std::error::Error::source(e).is_none());
            }
            other => panic!("expected InvalidKey, got {other:?}"),
        }
    }
    assert_eq!(RUNS.load(SeqCst), 0);
    assert!(store.is_empty());
    rt.scope(keyed(&"k".repeat(512))).await.unwrap();
}

#[test]
fn the_builder_names_the_bad_setting() {
    let cases = [
        (Runtime::builder(), "store"),
        (
            Runtime::builder()
                .store(MemoryStore::new())
                .lease(Duration::from_millis(5)),
            "lease",
        ),
        (
            Runtime::builder()
                .store(MemoryStore::new())
                .retention(Duration::ZERO),
            "retention",
        ),
        (
            Runtime::builder()
                .store(MemoryStore::new())
                .retry_backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "retry_backoff",
        ),
        (
            Runtime::builder()
                .store(MemoryStore::new())
                .compensation_attempts(0),
            "compensation_attempts",
        ),
    ];
    for (builder, bad) in cases {
        match builder.build() {
            Err(Error::Config { setting, .. }) => assert_eq!(setting, bad),
            other => panic!("{bad}: expected a config error, got {other:?}"),
        }
    }
}

mod global {
    use super::*;

    #[idempotent]
    pub async fn double(x: u64) -> Result<u64, TestError> {
        Ok(x * 2)
    }
}

#[tokio::test]
async fn install_global_serves_calls_outside_any_scope() {
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    rt.install_global().unwrap();
    // A spawned task inherits no scope; the global runtime answers.
    let out = tokio::spawn(global::double(21)).await.unwrap().unwrap();
    assert_eq!(out, 42);
    assert_eq!(store.len(), 1);
    assert!(matches!(
        runtime(MemoryStore::new()).install_global(),
        Err(Error::Config { .. })
    ));
}
