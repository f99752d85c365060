//! The reconciler at realistic times: a holder that renews after a pass
//! listed it, a clock read ahead of the record's, records a pass cannot
//! settle, another service's records on the same store, crash loops,
//! settings at their limits. Each scenario failed on the code before these
//! fixes.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempox::record::{ClaimRequest, Claimed, LeaseChange, OnExpired, Transition};
use tempox::{Fingerprint, Key, Kind, Record, RecordId, Runtime, Status};

use crate::ops::{self, Item};
use crate::scenarios::crash;
use crate::support::Hooked;
use crate::support::backend::Backend;

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, &Key::new(key).unwrap())
}

async fn record(rt: &Runtime, id: &RecordId) -> Record {
    rt.record(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record {id}"))
}

/// Claims `id` directly on the store, as a holder in another process would.
async fn claim(rt: &Runtime, id: &RecordId, kind: Kind, lease: Duration) -> Record {
    let req = ClaimRequest {
        id: id.clone(),
        kind,
        fingerprint: Fingerprint::from_bytes([9; 16]),
        input: b"[]".to_vec().into(),
        lease,
        on_expired: OnExpired::TakeOver,
        workflow: None,
        step: None,
    };
    match rt.store().claim(&req).await.unwrap() {
        Claimed::Acquired { record, .. } => record,
        other => panic!("not acquired: {other:?}"),
    }
}

/// A completed `rc.effect` of `tag` whose compensation another runner holds.
async fn compensation_held(rt: &Runtime, tag: &str, lease: Duration) -> Record {
    let item = Item {
        tag: tag.to_owned(),
        n: 0,
    };
    rt.scope(ops::effect(item)).await.unwrap();
    let done = rt
        .store()
        .list(&tempox::store::Query {
            op: Some("rc.effect".into()),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|r| {
            r.input
                .as_bytes()
                .windows(tag.len())
                .any(|w| w == tag.as_bytes())
        })
        .unwrap();
    let mut t = Transition::new(
        done.id.clone(),
        Status::Completed,
        done.token,
        Status::Compensating,
    );
    t.lease = LeaseChange::Acquire(lease);
    match rt.store().transition(&t).await.unwrap() {
        tempox::record::Transitioned::Applied(held) => held,
        other => panic!("not claimed: {other:?}"),
    }
}

/// 8: a holder whose lease ran out renews after a pass listed it, before the
/// pass writes. Its claim stands: the pass neither releases an idempotent
/// call (whose next caller would run the body beside it) nor parks a
/// non-idempotent one.
pub async fn a_holder_that_renews_after_the_listing_keeps_its_claim(b: &Backend) {
    let (store, hooks) = Hooked::wrap(b.store.clone());
    let rt = b.builder_on(store).build().unwrap();
    let idem = id("rc.idem", &b.key("late-renewal-idem"));
    let unprobed = id("rc.unprobed", &b.key("late-renewal-unprobed"));
    let held = [
        claim(&rt, &idem, Kind::Idempotent, b.lease()).await,
        claim(&rt, &unprobed, Kind::NonIdempotent, b.lease()).await,
    ];
    b.pass_lease().await;
    let (inner, lease) = (b.store.clone(), b.lease());
    let renewals = held.clone();
    hooks.after_next_due(async move {
        for r in renewals {
            assert!(
                inner
                    .renew(&r.id, Status::Pending, r.token, lease * 4)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    });
    let report = rt.reconciler().run_once().await.unwrap();
    assert!(
        report.released.is_empty() && report.parked.is_empty(),
        "{report:?}"
    );
    for r in held {
        let now = record(&rt, &r.id).await;
        assert_eq!(
            (now.status, now.token),
            (Status::Pending, r.token),
            "{now:?}"
        );
    }
}

/// 9: the same for a compensation: a pass that listed a `Compensating`
/// record as expired does not take it over after its runner renewed, so the
/// compensation does not run twice at once.
pub async fn a_running_compensation_renewed_late_is_not_claimed_again(b: &Backend) {
    let (store, hooks) = Hooked::wrap(b.store.clone());
    let rt = b.builder_on(store).build().unwrap();
    let tag = b.key("late-compensation");
    let held = compensation_held(&rt, &tag, b.lease()).await;
    b.pass_lease().await;
    let (inner, lease, renewed) = (b.store.clone(), b.lease(), held.clone());
    hooks.after_next_due(async move {
        let until = inner
            .renew(&renewed.id, Status::Compensating, renewed.token, lease * 4)
            .await
            .unwrap();
        assert!(until.is_some());
    });
    let report = rt.reconciler().run_once().await.unwrap();
    assert!(
        report.compensated.is_empty() && report.retried.is_empty(),
        "{report:?}"
    );
    let now = record(&rt, &held.id).await;
    assert_eq!(
        (now.status, now.token, now.attempts),
        (Status::Compensating, held.token, held.attempts)
    );
    assert_eq!(
        ops::undo_runs(&tag, 0),
        (0, 0),
        "the compensation never ran"
    );
}

/// 14: a runtime whose clock is ahead of the record's (read from another
/// node of a Cluster, or long ago) takes over nothing that is still held:
/// the store checks the lease on its own clock as it writes.
pub async fn a_clock_ahead_takes_over_nothing_held(b: &Backend) {
    let (store, hooks) = Hooked::wrap(b.store.clone());
    let rt = b.builder_on(store).build().unwrap();
    hooks.skew_clock(Duration::from_secs(3600));
    let long = Duration::from_secs(60);
    let tag = b.key("skewed-compensation");
    let compensating = compensation_held(&rt, &tag, long).await;
    let flow = id("rc.flow", &b.key("skewed-flow"));
    let wf = claim(&rt, &flow, Kind::Workflow, long).await;
    let mut t = Transition::new(flow.clone(), Status::Pending, wf.token, Status::RollingBack);
    t.lease = LeaseChange::Acquire(long);
    let rolling = match rt.store().transition(&t).await.unwrap() {
        tempox::record::Transitioned::Applied(r) => r,
        other => panic!("{other:?}"),
    };
    // By the skewed clock both leases ran out; by the store's, neither did.
    let ahead = rt.store().now().await.unwrap();
    assert!(compensating.lease_expired(ahead) && rolling.lease_expired(ahead));
    assert!(matches!(
        rt.compensate(&compensating.id).await,
        Err(tempox::Error::Fenced { .. })
    ));
    assert!(matches!(
        rt.recover_workflow(&flow).await,
        Err(tempox::Error::Fenced { .. })
    ));
    assert_eq!(
        ops::undo_runs(&tag, 0),
        (0, 0),
        "the compensation never ran"
    );
    let now = record(&rt, &compensating.id).await;
    assert_eq!(
        (now.status, now.token),
        (Status::Compensating, compensating.token)
    );
    let now = record(&rt, &flow).await;
    assert_eq!(
        (now.status, now.token),
        (Status::RollingBack, rolling.token)
    );
}

/// 5: records a pass cannot settle (crashed runs of a workflow this build no
/// longer links) are rescheduled with a backoff of their own; a crashed
/// non-idempotent call due after them is parked and alerted within a few
/// passes, however many of them there are.
pub async fn records_a_pass_cannot_settle_do_not_starve_the_rest(b: &Backend) {
    let rt = b.runtime();
    for i in 0..6 {
        let gone = id("gone.flow", &b.key(&format!("starve-{i}")));
        claim(&rt, &gone, Kind::Workflow, b.lease()).await;
    }
    b.pass(Duration::from_millis(5)).await;
    let key = b.key("starve-unprobed");
    crash(&rt, &key, ops::unprobed(key.clone())).await;
    b.pass_lease().await;
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let seen = alerts.clone();
    let r = rt
        .reconciler()
        .batch(4)
        .alert(move |r| seen.lock().unwrap().push(r.id.clone()));
    let parked = id("rc.unprobed", &key);
    let mut foreign = 0;
    for _ in 0..6 {
        let report = r.run_once().await.unwrap();
        foreign += report.foreign;
        if alerts.lock().unwrap().contains(&parked) {
            break;
        }
        b.pass(Duration::from_millis(20)).await;
    }
    assert_eq!(*alerts.lock().unwrap(), std::slice::from_ref(&parked));
    assert_eq!(record(&rt, &parked).await.status, Status::OutcomeUnknown);
    assert!(foreign >= 4, "{foreign}");
}

/// 6: another service's records on the same store are left alone: its
/// crashed call that has a probe is not parked as "it has no probe", its
/// compensation is not counted as failing; the pass counts them.
pub async fn another_services_records_are_left_alone(b: &Backend) {
    let rt = b.runtime();
    let charge = id("payments.charge", &b.key("foreign-charge"));
    let held = claim(&rt, &charge, Kind::NonIdempotent, b.lease()).await;
    let refund = id("payments.other", &b.key("foreign-refund"));
    let done = claim(&rt, &refund, Kind::NonIdempotent, b.lease()).await;
    let t = Transition::new(
        refund.clone(),
        Status::Pending,
        done.token,
        Status::Completed,
    );
    assert!(rt.store().apply(&t).await.unwrap());
    let done = record(&rt, &refund).await;
    let mut t = Transition::new(
        refund.clone(),
        Status::Completed,
        done.token,
        Status::Compensating,
    );
    t.lease = LeaseChange::Acquire(b.lease());
    t.attempts = tempox::record::AttemptsChange::Set(1);
    assert!(rt.store().apply(&t).await.unwrap());
    let compensating = record(&rt, &refund).await;
    b.pass_lease().await;
    let r = rt.reconciler().max_attempts(1);
    let mut foreign = 0;
    for _ in 0..2 {
        let report = r.run_once().await.unwrap();
        assert!(
            report.handled() == 0 && report.errors.is_empty(),
            "{report:?}"
        );
        foreign += report.foreign;
    }
    assert!(foreign >= 2, "{foreign}");
    let now = record(&rt, &charge).await;
    assert_eq!((now.status, now.token), (Status::Pending, held.token));
    let now = record(&rt, &refund).await;
    assert_eq!(
        (now.status, now.token, now.attempts),
        (Status::Compensating, compensating.token, 1)
    );
    assert!(matches!(
        rt.compensate(&refund).await,
        Err(tempox::Error::Config { .. })
    ));
}

/// 12: an idempotent call whose body crashes its process on every run is
/// parked as `RecoveryFailed` (alerted, visible) after `recovery_attempts`
/// recoveries instead of being released for ever; the operator's retry frees
/// the key.
pub async fn a_call_that_crashes_every_run_is_parked(b: &Backend) {
    let rt = b.builder().recovery_attempts(1).build().unwrap();
    let key = b.key("crash-loop-call");
    let call = id("rc.idem", &key);
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let seen = alerts.clone();
    let r = rt
        .reconciler()
        .alert(move |r| seen.lock().unwrap().push(r.id.clone()));
    for _ in 0..2 {
        crash(&rt, &key, ops::idem(key.clone())).await;
        b.pass_lease().await;
        for _ in 0..3 {
            r.run_once().await.unwrap();
            if record(&rt, &call).await.status != Status::Pending {
                break;
            }
        }
    }
    let parked = record(&rt, &call).await;
    assert_eq!(
        (parked.status, parked.attempts),
        (Status::RecoveryFailed, 2),
        "{parked:?}"
    );
    assert_eq!(*alerts.lock().unwrap(), std::slice::from_ref(&call));
    assert!(matches!(
        rt.scope(ops::idem(key.clone())).await,
        Err(ops::TestError::Tempox(tempox::Error::Closed { .. }))
    ));
    assert_eq!(rt.retry(&call).await.unwrap().status, Status::Released);
    assert_eq!(rt.scope(ops::idem(key.clone())).await.unwrap(), 1);
}

/// 11: a lease renewal waiting on the store does not stall the body: the
/// body runs to its end while every renewal is held.
pub async fn a_renewal_held_by_the_store_does_not_stall_the_body(b: &Backend) {
    let (store, hooks) = Hooked::wrap(b.store.clone());
    let rt = b
        .builder_on(store)
        .lease(Duration::from_millis(60))
        .build()
        .unwrap();
    let gate = hooks.hold_renewals();
    let key = b.key("held-renewal");
    let call = tokio::spawn({
        let rt = rt.clone();
        async move { rt.scope(ops::slow(key, 25, 6)).await }
    });
    let done = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the body ran on while its renewal waited")
        .unwrap();
    assert_eq!(done.unwrap(), 25);
    gate.add_permits(1000);
}

/// 7: settings that cannot work are refused at build, naming the setting; a
/// reconciler with an interval too long to add to is not killed by it, and
/// a pass that panics is logged while the next one runs.
pub async fn settings_at_their_limits_and_a_pass_that_panics(b: &Backend) {
    for (setting, builder) in [
        ("retention", b.builder().retention(Duration::MAX)),
        ("lease", b.builder().lease(Duration::MAX)),
        ("in_flight_wait", b.builder().in_flight_wait(Duration::MAX)),
        (
            "retry_backoff",
            b.builder()
                .retry_backoff(Duration::from_secs(1), Duration::MAX),
        ),
    ] {
        match builder.build() {
            Err(tempox::Error::Config {
                setting: named,
                message,
            }) => {
                assert_eq!(named, setting);
                assert!(message.contains("too long"), "{message}");
            }
            other => panic!("{setting}: {other:?}"),
        }
    }

    let rt = b.runtime();
    let keys = [b.key("limits-a"), b.key("limits-b")];
    for key in &keys {
        crash(&rt, key, ops::unprobed(key.clone())).await;
    }
    b.pass_lease().await;
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let handle = rt
        .reconciler()
        .interval(Duration::MAX)
        .alert(move |r| {
            let n = seen.fetch_add(1, SeqCst);
            assert!(n > 0, "the first alert's hook panics ({})", r.id);
        })
        .spawn();
    // The first pass panics in the hook; with an endless interval no other
    // pass would come, so one spawned with a short one shows the next runs.
    let again = rt
        .reconciler()
        .interval(Duration::from_millis(5))
        .alert({
            let seen = calls.clone();
            move |_| {
                seen.fetch_add(1, SeqCst);
            }
        })
        .spawn();
    for _ in 0..2_000 {
        if calls.load(SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        b.pass(Duration::from_millis(1)).await;
    }
    assert!(
        calls.load(SeqCst) >= 2,
        "alerts raised: {}",
        calls.load(SeqCst)
    );
    assert!(
        !handle.is_finished(),
        "the endless interval killed the reconciler"
    );
    assert!(!again.is_finished());
    handle.stop().await;
    again.stop().await;
}

/// Damaged-data issue, item 2: a completed record without its output is
/// corrupt, not a replay of `null` (which an `Option` would take for
/// `None`): the caller gets an error naming the record and the field, and
/// the body does not run again.
pub async fn a_completed_record_without_its_output_is_corrupt(b: &Backend) {
    let rt = b.runtime();
    let key = b.key("no-output");
    // A record of the call itself, completed with no output (as a store
    // that lost the field would hold it).
    crash(&rt, &key, ops::maybe(key.clone())).await;
    let call = id("rc.maybe", &key);
    let held = record(&rt, &call).await;
    let t = Transition::new(call.clone(), Status::Pending, held.token, Status::Completed);
    assert!(rt.store().apply(&t).await.unwrap());
    assert_eq!(record(&rt, &call).await.output, None);
    let err = rt.scope(ops::maybe(key.clone())).await.unwrap_err();
    match &err {
        ops::TestError::Tempox(tempox::Error::Store { source }) => {
            assert_eq!(source.kind(), tempox::StoreErrorKind::Corrupt, "{err}");
            let text = source.to_string();
            assert!(
                text.contains(&format!("`{call}`")) && text.contains("`output`"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ops::MAYBE_RUNS.lock().unwrap().get(&key), Some(&1));
}

/// A writer of formatted log lines into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// 6: a reconciler warns once per operation it meets but does not link,
/// however many of its records and passes there are.
#[tokio::test(flavor = "current_thread")]
async fn foreign_records_are_warned_about_once_per_operation() {
    let b = crate::support::backend::memory().await;
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = b.runtime();
    for (op, key) in [
        ("billing.charge", "a"),
        ("billing.charge", "b"),
        ("mail.send", "c"),
    ] {
        claim(&rt, &id(op, key), Kind::NonIdempotent, b.lease()).await;
    }
    let r = rt.reconciler();
    let mut foreign = 0;
    for _ in 0..3 {
        b.pass_lease().await;
        b.pass(Duration::from_secs(60)).await;
        foreign += r.run_once().await.unwrap().foreign;
    }
    assert!(foreign >= 6, "{foreign}");
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("does not link"))
        .collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings.iter().any(|l| l.contains("billing.charge")),
        "{text}"
    );
    assert!(warnings.iter().any(|l| l.contains("mail.send")), "{text}");
}
