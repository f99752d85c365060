//! The scenarios, each run on every backend.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempox::mirror::{Drift, Mirror, MirrorError};
use tempox::record::{AttemptsChange, LeaseChange, Transition};
use tempox::store::Query;
use tempox::{Key, Reconciler, Record, RecordId, Runtime, Status};
use tokio::sync::{Notify, Semaphore};

use crate::ops::{self, Behaviour, Item};
use crate::support::backend::Backend;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `effect` for items `0..count` of `tag` and returns their records' ids
/// by item number.
async fn effects(rt: &Runtime, tag: &str, count: u32) -> BTreeMap<u32, RecordId> {
    rt.scope(async {
        for n in 0..count {
            ops::effect(Item {
                tag: tag.to_owned(),
                n,
            })
            .await
            .unwrap();
        }
    })
    .await;
    let mut ids = BTreeMap::new();
    let mut q = Query {
        op: Some("rc.effect".into()),
        limit: 1000,
        ..Query::default()
    };
    loop {
        let page = rt.store().list(&q).await.unwrap();
        q.after = page.last().map(|r| r.id.clone());
        let done = page.len() < q.limit;
        for r in page {
            let [item]: [Item; 1] = serde_json::from_slice(&r.input).unwrap();
            if item.tag == tag {
                ids.insert(item.n, r.id);
            }
        }
        if done {
            return ids;
        }
    }
}

/// Puts a completed call into `Compensating`: with a lease (`crashed`, a
/// compensator claimed it and died) or without (scheduled, due now).
async fn start_compensating(rt: &Runtime, id: &RecordId, crashed: bool) {
    let r = rt.record(id).await.unwrap().unwrap();
    let mut t = Transition::new(id.clone(), Status::Completed, r.token, Status::Compensating);
    if crashed {
        t.lease = LeaseChange::Acquire(Duration::from_millis(1));
        t.attempts = AttemptsChange::Set(1);
    } else {
        t.attempts = AttemptsChange::Set(0);
    }
    rt.store().transition(&t).await.unwrap();
}

async fn record(rt: &Runtime, id: &RecordId) -> Record {
    rt.record(id).await.unwrap().unwrap()
}

fn collecting_alerts(r: Reconciler) -> (Reconciler, Arc<Mutex<Vec<RecordId>>>) {
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let sink = alerts.clone();
    (
        r.alert(move |parked| lock(&sink).push(parked.id.clone())),
        alerts,
    )
}

/// `count` stale compensations (every tenth always fails), then `reconcilers`
/// reconcilers in parallel until nothing is due.
async fn race(b: &Backend, scenario: &str, reconcilers: usize) {
    let tag = b.key(scenario);
    ops::behave(
        &tag,
        Behaviour {
            always_fail_every: Some(10),
            ..Behaviour::default()
        },
    );
    let rt = b.runtime();
    let ids = effects(&rt, &tag, 1000).await;
    assert_eq!(ids.len(), 1000);
    for id in ids.values() {
        start_compensating(&rt, id, true).await;
    }
    b.pass_lease().await;
    let (base, alerts) = collecting_alerts(b.runtime().reconciler().batch(64).max_attempts(2));
    let runs: Vec<_> = (0..reconcilers)
        .map(|_| {
            let r = base.clone();
            let store = b.store.clone();
            tokio::spawn(async move {
                for _ in 0..10_000 {
                    r.run_once().await.unwrap();
                    if store.due(1).await.unwrap().is_empty() {
                        return;
                    }
                }
                panic!("still due after 10 000 passes");
            })
        })
        .collect();
    for run in runs {
        run.await.unwrap();
    }
    let mut expected_alerts = BTreeSet::new();
    for (n, id) in &ids {
        let r = record(&rt, id).await;
        let (runs, done) = ops::undo_runs(&tag, *n);
        // Claimed once by the crashed compensator, once by one reconciler.
        assert_eq!(r.attempts, 2, "item {n}: {r:?}");
        if n % 10 == 0 {
            assert_eq!(r.status, Status::CompensationFailed, "item {n}");
            assert_eq!(
                r.error.as_deref(),
                Some(format!("undo {n} failed on run 1").as_str())
            );
            assert_eq!((runs, done), (1, 0), "item {n}");
            expected_alerts.insert(id.clone());
        } else {
            assert_eq!(r.status, Status::Compensated, "item {n}");
            assert_eq!((runs, done), (1, 1), "item {n}: compensated exactly once");
        }
    }
    let alerts = lock(&alerts).clone();
    let unique: BTreeSet<_> = alerts.iter().cloned().collect();
    assert_eq!(unique.len(), alerts.len(), "an alert fired twice");
    assert_eq!(unique, expected_alerts, "one alert per parked record");
}

pub async fn two_reconcilers_race_over_a_thousand_stale_compensations(b: &Backend) {
    race(b, "race2", 2).await;
}

pub async fn eight_reconcilers_race_over_a_thousand_stale_compensations(b: &Backend) {
    race(b, "race8", 8).await;
}

pub async fn a_reconciler_killed_mid_compensation_is_taken_over_after_the_lease(b: &Backend) {
    let tag = b.key("killed");
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(Notify::new());
    ops::behave(
        &tag,
        Behaviour {
            gate: Some((gate.clone(), started.clone())),
            ..Behaviour::default()
        },
    );
    let rt = b.runtime();
    let id = effects(&rt, &tag, 1).await.remove(&0).unwrap();
    start_compensating(&rt, &id, false).await;
    let doomed = b
        .runtime()
        .reconciler()
        .interval(Duration::from_secs(3600))
        .spawn();
    started.notified().await;
    doomed.abort(); // dies holding the compensation's lease
    let held = record(&rt, &id).await;
    assert_eq!((held.status, held.attempts), (Status::Compensating, 1));
    ops::behave(&tag, Behaviour::default());
    // While the lease lives, nobody else runs it.
    let early = b.runtime().reconciler().run_once().await.unwrap();
    assert!(early.compensated.is_empty(), "{early:?}");
    b.pass_lease().await;
    let report = b.runtime().reconciler().run_once().await.unwrap();
    assert_eq!(report.compensated, std::slice::from_ref(&id));
    let r = record(&rt, &id).await;
    assert_eq!((r.status, r.attempts), (Status::Compensated, 2));
    assert_eq!(
        ops::undo_runs(&tag, 0),
        (2, 1),
        "the dead run never finished; the takeover did"
    );
    gate.add_permits(1);
}

/// Passes until `id` leaves `Compensating` (letting backoff delays pass).
async fn reconcile_until_settled(b: &Backend, r: &Reconciler, id: &RecordId) -> (Record, usize) {
    let rt = b.runtime();
    let mut retried = 0;
    for _ in 0..200 {
        let report = r.run_once().await.unwrap();
        retried += report.retried.len();
        let now = record(&rt, id).await;
        if now.status != Status::Compensating {
            return (now, retried);
        }
        b.pass(Duration::from_millis(20)).await;
    }
    panic!("{id} never settled");
}

pub async fn failing_twice_then_succeeding_ends_compensated_with_three_attempts(b: &Backend) {
    let tag = b.key("twice");
    ops::behave(
        &tag,
        Behaviour {
            fail_first: 2,
            ..Behaviour::default()
        },
    );
    let rt = b.runtime();
    let id = effects(&rt, &tag, 1).await.remove(&0).unwrap();
    start_compensating(&rt, &id, false).await;
    let r = rt.reconciler().max_attempts(5);
    let (done, retried) = reconcile_until_settled(b, &r, &id).await;
    assert_eq!((done.status, done.attempts), (Status::Compensated, 3));
    assert_eq!(
        retried, 2,
        "two failures, each scheduled again with backoff"
    );
    assert_eq!(ops::undo_runs(&tag, 0), (3, 1));
}

pub async fn always_failing_ends_compensation_failed_with_its_last_error(b: &Backend) {
    let tag = b.key("always");
    ops::behave(
        &tag,
        Behaviour {
            fail_first: 1_000,
            ..Behaviour::default()
        },
    );
    let rt = b.runtime();
    let id = effects(&rt, &tag, 1).await.remove(&0).unwrap();
    start_compensating(&rt, &id, false).await;
    let (r, alerts) = collecting_alerts(rt.reconciler().max_attempts(3));
    let (parked, _) = reconcile_until_settled(b, &r, &id).await;
    assert_eq!(
        (parked.status, parked.attempts),
        (Status::CompensationFailed, 3)
    );
    assert_eq!(parked.error.as_deref(), Some("undo 0 failed on run 3"));
    assert!(parked.output.is_some(), "the output is kept");
    for _ in 0..3 {
        r.run_once().await.unwrap();
    }
    assert_eq!(
        *lock(&alerts),
        std::slice::from_ref(&id),
        "alerted exactly once"
    );
    assert!(rt.dead_letters().await.unwrap().iter().any(|d| d.id == id));
}

pub async fn operator_retry_and_resolve(b: &Backend) {
    let tag = b.key("operator");
    ops::behave(
        &tag,
        Behaviour {
            fail_first: 1_000,
            ..Behaviour::default()
        },
    );
    let rt = b
        .builder()
        .retention(Duration::from_millis(300))
        .build()
        .unwrap();
    let ids = effects(&rt, &tag, 2).await;
    let r = rt.reconciler().max_attempts(1);
    for id in ids.values() {
        start_compensating(&rt, id, false).await;
        let (parked, _) = reconcile_until_settled(b, &r, id).await;
        assert_eq!(parked.status, Status::CompensationFailed);
    }
    // Dead letters outlive any retention (other records of the test expire).
    b.pass(Duration::from_millis(400)).await;
    rt.store().expire(1000).await.unwrap();
    assert_eq!(
        rt.dead_letters()
            .await
            .unwrap()
            .iter()
            .filter(|d| ids.values().any(|i| *i == d.id))
            .count(),
        2
    );

    // Retry: attempts reset, audited, compensated once the cause is fixed.
    ops::behave(&tag, Behaviour::default());
    let retried = rt.retry(&ids[&0]).await.unwrap();
    assert_eq!(
        (retried.status, retried.attempts),
        (Status::Compensating, 0)
    );
    assert!(
        retried
            .note
            .as_deref()
            .is_some_and(|n| n.ends_with("operator retry"))
    );
    let (done, _) = reconcile_until_settled(b, &r, &ids[&0]).await;
    assert_eq!((done.status, done.attempts), (Status::Compensated, 1));

    // Resolve: closed by hand, note kept, then removed by retention only.
    let resolved = rt.resolve(&ids[&1], "refunded by hand").await.unwrap();
    assert_eq!(resolved.status, Status::Resolved);
    assert!(
        resolved
            .note
            .as_deref()
            .is_some_and(|n| n.ends_with("resolved: refunded by hand"))
    );
    assert!(matches!(
        rt.retry(&ids[&1]).await,
        Err(tempox::Error::WrongStatus { .. })
    ));
    b.pass(Duration::from_millis(400)).await;
    let report = rt.reconciler().run_once().await.unwrap();
    assert!(report.expired >= 2, "{report:?}");
    assert!(rt.record(&ids[&1]).await.unwrap().is_none());
}

/// Runs `call` in a task until it parks at its crash point (armed for
/// `key`), then aborts it: the process dies there.
pub(crate) async fn crash<F, T>(rt: &Runtime, key: &str, call: F)
where
    F: std::future::Future<Output = Result<T, ops::TestError>> + Send + 'static,
    T: Send + 'static,
{
    let parked = ops::crash_at(key);
    let rt = rt.clone();
    let task = tokio::spawn(async move { rt.scope(call).await });
    parked.notified().await;
    task.abort();
    let _ = task.await;
}

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, &Key::new(key).unwrap())
}

pub async fn crashed_calls_are_released_probed_or_parked(b: &Backend) {
    let rt = b.runtime();
    let (k_idem, k_unprobed) = (b.key("crash-idem"), b.key("crash-unprobed"));
    let (k_happened, k_lost) = (b.key("crash-probe-happened"), b.key("crash-probe-lost"));
    crash(&rt, &k_idem, ops::idem(k_idem.clone())).await;
    crash(&rt, &k_unprobed, ops::unprobed(k_unprobed.clone())).await;
    crash(&rt, &k_happened, ops::probed(k_happened.clone())).await;
    crash(&rt, &k_lost, ops::probed(k_lost.clone())).await;
    b.pass_lease().await;
    let (r, alerts) = collecting_alerts(b.runtime().reconciler());
    let mut report = r.run_once().await.unwrap();
    // Redis lists due work per bucket; a second pass picks up any stragglers.
    let more = r.run_once().await.unwrap();
    report.released.extend(more.released);
    report.probed.extend(more.probed);
    report.parked.extend(more.parked);

    assert!(
        report.released.contains(&id("rc.idem", &k_idem)),
        "{report:?}"
    );
    let idem = record(&rt, &id("rc.idem", &k_idem)).await;
    assert_eq!(idem.status, Status::Released);
    assert_eq!(
        rt.scope(ops::idem(k_idem.clone())).await.unwrap(),
        1,
        "the next call runs it"
    );

    let parked = id("rc.unprobed", &k_unprobed);
    assert!(report.parked.contains(&parked), "{report:?}");
    assert_eq!(record(&rt, &parked).await.status, Status::OutcomeUnknown);
    assert_eq!(*lock(&alerts), [parked]);

    for (key, status, output) in [
        (&k_happened, Status::Completed, Some(&b"30"[..])),
        (&k_lost, Status::Released, None),
    ] {
        let probed = id("rc.probed", key);
        assert!(report.probed.contains(&probed), "{report:?}");
        let r = record(&rt, &probed).await;
        assert_eq!((r.status, r.output.as_deref()), (status, output), "{key}");
    }
    assert_eq!(
        rt.scope(ops::probed(k_happened.clone())).await.unwrap(),
        30,
        "replayed from the probe"
    );
    assert_eq!(
        rt.scope(ops::probed(k_lost.clone())).await.unwrap(),
        3,
        "no effect: runs now"
    );
}

pub async fn a_crashed_workflow_is_resumed_by_the_reconciler(b: &Backend) {
    let rt = b.runtime();
    let key = b.key("crash-flow");
    crash(&rt, &key, ops::flow(key.clone())).await;
    b.pass_lease().await;
    let report = b.runtime().reconciler().run_once().await.unwrap();
    let flow = id("rc.flow", &key);
    assert_eq!(report.resumed, std::slice::from_ref(&flow), "{report:?}");
    let r = record(&rt, &flow).await;
    assert_eq!(
        (r.status, r.output.as_deref()),
        (Status::Completed, Some(&b"2"[..]))
    );
    let steps: Vec<_> = rt
        .steps(&flow)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.step, s.status, s.attempts))
        .collect();
    assert_eq!(
        steps,
        [
            (Some(1), Status::Completed, 1),
            (Some(2), Status::Completed, 1)
        ]
    );
}

/// A cache that should hold what the source says.
#[derive(Clone, Default)]
struct Cache {
    intended: Arc<Mutex<BTreeMap<String, u32>>>,
    observed: Arc<Mutex<BTreeMap<String, u32>>>,
    failing_repairs: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl Mirror for Cache {
    type Value = u32;

    fn name(&self) -> &str {
        "cache"
    }

    fn interval(&self) -> Duration {
        Duration::ZERO
    }

    async fn intended(&self) -> Result<BTreeMap<String, u32>, MirrorError> {
        Ok(lock(&self.intended).clone())
    }

    async fn observed(&self) -> Result<BTreeMap<String, u32>, MirrorError> {
        Ok(lock(&self.observed).clone())
    }

    async fn repair(&self, drift: &Drift<u32>) -> Result<(), MirrorError> {
        if self.failing_repairs.load(SeqCst) > 0 {
            self.failing_repairs.fetch_sub(1, SeqCst);
            return Err("cache unreachable".into());
        }
        let mut observed = lock(&self.observed);
        for (k, v) in &drift.missing {
            observed.insert(k.clone(), *v);
        }
        for (k, want, _) in &drift.changed {
            observed.insert(k.clone(), *want);
        }
        for (k, _) in &drift.unexpected {
            observed.remove(k);
        }
        Ok(())
    }
}

pub async fn a_mirror_with_injected_drift_converges(b: &Backend) {
    let cache = Cache::default();
    *lock(&cache.intended) = [("a", 1), ("b", 2), ("c", 3)]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
    *lock(&cache.observed) = [("a", 1), ("b", 9), ("d", 4)]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
    cache.failing_repairs.store(1, SeqCst);
    let rt = b.builder().mirror(cache.clone()).build().unwrap();
    let r = rt.reconciler();
    let pass = || async { r.run_once().await.unwrap().mirrors.remove(0) };
    let first = pass().await;
    assert_eq!((first.drift, first.repaired), (3, 0));
    assert!(
        first
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cache unreachable")),
        "{first:?}"
    );
    let second = pass().await;
    assert_eq!(
        (second.drift, second.repaired, second.error),
        (3, 3, None),
        "retried next pass"
    );
    assert_eq!(pass().await.drift, 0, "converged");
    assert_eq!(*lock(&cache.observed), *lock(&cache.intended));
    // Drift injected again: an entry evicted.
    lock(&cache.observed).remove("a");
    let again = pass().await;
    assert_eq!((again.drift, again.repaired), (1, 1));
    let stats = rt.mirrors().remove(0);
    assert_eq!(
        (
            stats.runs,
            stats.drift_found,
            stats.repaired,
            stats.failures
        ),
        (4, 7, 4, 1)
    );
}

pub async fn a_spawned_reconciler_works_in_the_background_and_stops_cleanly(b: &Backend) {
    let rt = b.runtime();
    let key = b.key("spawned");
    crash(&rt, &key, ops::idem(key.clone())).await;
    b.pass_lease().await;
    let handle = b
        .runtime()
        .reconciler()
        .interval(Duration::from_millis(10))
        .spawn();
    let released = id("rc.idem", &key);
    let mut status = Status::Pending;
    for _ in 0..500 {
        status = record(&rt, &released).await.status;
        if status != Status::Pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, Status::Released);
    // Stopping waits for the pass under way, then the task is gone.
    tokio::time::timeout(Duration::from_secs(10), handle.stop())
        .await
        .unwrap();
}

pub async fn an_alert_cut_off_before_its_acknowledgement_is_raised_again(b: &Backend) {
    let rt = b.runtime();
    let key = b.key("alert-cut-off");
    crash(&rt, &key, ops::unprobed(key.clone())).await;
    b.pass_lease().await;
    let parked = id("rc.unprobed", &key);

    // A reconciler that dies inside the alert hook: after the alert was
    // claimed, before it was acknowledged.
    let dying = b
        .runtime()
        .reconciler()
        .alert(|r| panic!("the reconciler dies while alerting {}", r.id));
    let died = tokio::spawn(async move {
        for _ in 0..3 {
            let _ = dying.run_once().await;
        }
    })
    .await;
    assert!(died.is_err_and(|e| e.is_panic()), "the hook never ran");
    assert_eq!(record(&rt, &parked).await.status, Status::OutcomeUnknown);

    // Within the lease the claimed alert is nobody else's to raise.
    let (r, alerts) = collecting_alerts(b.runtime().reconciler());
    for _ in 0..2 {
        r.run_once().await.unwrap();
    }
    assert!(lock(&alerts).is_empty(), "raised twice within the lease");

    // After it, another reconciler raises it, once.
    b.pass_lease().await;
    for _ in 0..3 {
        r.run_once().await.unwrap();
    }
    assert_eq!(*lock(&alerts), std::slice::from_ref(&parked));
    let acked = record(&rt, &parked).await;
    assert_eq!(
        (acked.status, acked.due_at),
        (Status::OutcomeUnknown, None),
        "acknowledged, still a dead letter"
    );
    assert!(
        rt.dead_letters()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == parked)
    );
}
