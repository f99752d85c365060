//! Recovery at realistic times: leases that end in another order, retention
//! passing while a workflow waits, an operator acting between two passes.
//! Each scenario failed on the code before these fixes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tempox::record::{LeaseChange, Transition};
use tempox::{Record, RecordId, Runtime, Status};

use crate::scenarios::{crash, record, workflow_id};
use crate::shop::{self, Backend, Order};
use crate::support::Hooked;

fn step_id(op: &str, workflow: &RecordId, step: u32) -> RecordId {
    RecordId::parse(&format!("{op}/{workflow}#{step}")).unwrap()
}

/// Passes until `id` is in `status` (at most `passes`; Redis lists due work
/// bucket by bucket, and retried compensations wait out their backoff).
async fn reconcile_until(b: &Backend, rt: &Runtime, id: &RecordId, status: Status) -> Record {
    for _ in 0..40 {
        rt.reconciler().run_once().await.unwrap();
        let r = record(rt, id).await;
        if r.status == status {
            return r;
        }
        b.pass(Duration::from_millis(20)).await;
    }
    panic!("{id} never reached {status}: {:?}", record(rt, id).await);
}

/// 1 (a): a workflow that crashed after its charge and is resumed after the
/// charge step's retention would have passed replays the charge: a step lives
/// as long as its workflow (invariant 9).
pub async fn a_step_outlives_its_retention_while_its_workflow_is_not_done(b: &Backend) {
    let rt = b.retaining().build().unwrap();
    let order = shop::order(b, "retained", 300, false);
    crash(&rt, &order, "after:2", shop::checkout(order.clone())).await;
    let id = workflow_id("shop.checkout", &order);
    b.pass_retention().await;
    // A pass removes what is past retention, and resumes the workflow.
    let fresh = b.retaining().build().unwrap();
    let report = fresh.reconciler().run_once().await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let done = reconcile_until(b, &fresh, &id, Status::Completed).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(shop::count(&order.id, "charge"), 1, "charged once");
    assert_eq!(shop::count(&order.id, "ship"), 1);
    // Done: the steps' retention starts with the workflow's, and ends no
    // later than it.
    let wf = record(&fresh, &id).await;
    assert!(wf.expires_at.is_some() && wf.due_at.is_none(), "{wf:?}");
    for step in fresh.steps(&id).await.unwrap() {
        let ends = step
            .expires_at
            .expect("a step of a done workflow has retention");
        assert!(ends <= wf.expires_at.unwrap(), "{step:?}");
    }
}

/// A checkout whose shipping fails and whose refund is parked as a dead
/// letter (the refunds fail): its rollback stopped, `PartiallyRolledBack`.
/// Its order, and the ids of the workflow and of its charge step.
async fn parked_checkout(b: &Backend, rt: &Runtime, name: &str) -> (Order, RecordId, RecordId) {
    let order = shop::order(b, name, 900, true);
    shop::fail_refunds(&order.id, true);
    assert!(rt.scope(shop::checkout(order.clone())).await.is_err());
    let id = workflow_id("shop.checkout", &order);
    assert_eq!(record(rt, &id).await.status, Status::PartiallyRolledBack);
    let charge = step_id("shop.charge", &id, 2);
    assert_eq!(record(rt, &charge).await.status, Status::CompensationFailed);
    (order, id, charge)
}

/// 1 (b) and 3: a rollback stopped at a dead-lettered refund, parked longer
/// than the retention; the operator retries the refund; the reconciler
/// carries the rollback on by itself, and the older steps are compensated
/// (not lost to expiry).
pub async fn a_parked_rollback_goes_on_after_the_operator_retries(b: &Backend) {
    let rt = b.retaining().compensation_attempts(1).build().unwrap();
    let (order, id, charge) = parked_checkout(b, &rt, "parked-retry").await;

    // A weekend passes, with reconcilers running.
    b.pass_retention().await;
    let r = b
        .retaining()
        .compensation_attempts(1)
        .build()
        .unwrap()
        .reconciler()
        .max_attempts(1);
    r.run_once().await.unwrap();
    let reserve = step_id("shop.reserve", &id, 1);
    assert_eq!(record(&rt, &reserve).await.status, Status::Completed);
    assert_eq!(record(&rt, &id).await.status, Status::PartiallyRolledBack);

    // The operator fixes the refunds and retries the dead letter: no call
    // of `recover_workflow`, only passes.
    shop::fail_refunds(&order.id, false);
    rt.retry(&charge).await.unwrap();
    let done = reconcile_until(b, &rt, &id, Status::RolledBack).await;
    assert_eq!(done.status, Status::RolledBack);
    assert_eq!(record(&rt, &charge).await.status, Status::Compensated);
    assert_eq!(record(&rt, &reserve).await.status, Status::Compensated);
    assert_eq!(
        (
            shop::count(&order.id, "refund"),
            shop::count(&order.id, "release")
        ),
        (1, 1)
    );
}

/// 3: the same, when the operator resolves the dead letter by hand instead.
pub async fn a_parked_rollback_goes_on_after_the_operator_resolves(b: &Backend) {
    let rt = b.runtime_with(1);
    let (order, id, charge) = parked_checkout(b, &rt, "parked-resolve").await;
    rt.resolve(&charge, "refunded by hand").await.unwrap();
    let done = reconcile_until(b, &rt, &id, Status::RolledBack).await;
    assert_eq!(done.status, Status::RolledBack);
    assert_eq!(shop::count(&order.id, "refund"), 0);
    assert_eq!(shop::count(&order.id, "release"), 1);
}

/// 2: the charge step's lease ends after its workflow's. The reconciler must
/// wait for the step, not roll the workflow back because of its own step's
/// lease; once the step's lease ends the workflow is resumed and completes.
pub async fn a_resumed_workflow_waits_for_a_step_whose_lease_ends_later(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "late-step", 300, false);
    crash(&rt, &order, "inside:2", shop::checkout(order.clone())).await;
    let id = workflow_id("shop.checkout", &order);
    let charge = step_id("shop.charge", &id, 2);
    let held = record(&rt, &charge).await;
    assert_eq!(held.status, Status::Pending);
    // The step was claimed (or renewed) after its workflow: its lease ends
    // later.
    let lease = b.lease();
    rt.store()
        .renew(&charge, Status::Pending, held.token, lease * 3)
        .await
        .unwrap()
        .unwrap();
    b.pass_lease().await;
    let report = b.runtime().reconciler().run_once().await.unwrap();
    assert!(report.rolled_back.is_empty(), "{report:?}");
    assert_eq!(record(&rt, &id).await.status, Status::Pending);
    assert_eq!(shop::count(&order.id, "refund"), 0, "nothing undone");

    b.pass(lease * 3).await;
    let done = reconcile_until(b, &rt, &id, Status::Completed).await;
    assert_eq!(
        done.output.as_deref(),
        Some(format!("\"ch-{}\"", order.id).as_bytes())
    );
    assert_eq!(shop::count(&order.id, "charge"), 1, "the probe found it");
    assert_eq!(shop::count(&order.id, "ship"), 1);
}

/// 2: a rollback that stopped at a step still pending (the old outcome of
/// the case above) has that step settled once its lease ends, and then goes
/// on: no record is stuck for ever.
pub async fn a_pending_step_under_a_stopped_rollback_is_settled(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "stuck-step", 300, false);
    crash(&rt, &order, "inside:2", shop::checkout(order.clone())).await;
    let id = workflow_id("shop.checkout", &order);
    b.pass_lease().await;
    // Stopped by hand where the old code stopped it.
    let wf = record(&rt, &id).await;
    let mut t = Transition::new(id.clone(), Status::Pending, wf.token, Status::RollingBack);
    t.lease = LeaseChange::Acquire(b.lease());
    let Ok(tempox::record::Transitioned::Applied(wf)) = rt.store().transition(&t).await else {
        panic!("not taken over");
    };
    let t = Transition::new(
        id.clone(),
        Status::RollingBack,
        wf.token,
        Status::PartiallyRolledBack,
    );
    assert!(rt.store().apply(&t).await.unwrap());

    let done = reconcile_until(b, &rt, &id, Status::RolledBack).await;
    assert_eq!(done.status, Status::RolledBack);
    let charge = step_id("shop.charge", &id, 2);
    assert_eq!(record(&rt, &charge).await.status, Status::Compensated);
    assert_eq!(
        (
            shop::count(&order.id, "charge"),
            shop::count(&order.id, "refund"),
            shop::count(&order.id, "release")
        ),
        (1, 1, 1)
    );
}

/// 4: a rollback waiting out a compensation's backoff, whose step meanwhile
/// is dead-lettered by another runtime and resolved by the operator, goes on
/// (it used to spin on the status it did not expect, reading the store
/// thousands of times a second).
pub async fn a_rollback_whose_step_is_resolved_meanwhile_goes_on(b: &Backend) {
    let (store, hooks) = Hooked::wrap(b.store.clone());
    let slow = b
        .builder_on(store)
        .retry_backoff(Duration::from_millis(600), Duration::from_secs(2))
        .compensation_attempts(5)
        .build()
        .unwrap();
    let order = shop::order(b, "resolved-meanwhile", 900, true);
    shop::fail_refunds(&order.id, true);
    let caller = tokio::spawn({
        let (rt, order) = (slow.clone(), order.clone());
        async move { rt.scope(shop::checkout(order)).await }
    });
    while shop::count(&order.id, "refund-failed") == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let id = workflow_id("shop.checkout", &order);
    let charge = step_id("shop.charge", &id, 2);
    // Another runtime, with one attempt, dead-letters it; the operator
    // resolves it.
    let other = b.runtime_with(1);
    loop {
        let r = record(&other, &charge).await;
        if r.status == Status::CompensationFailed {
            break;
        }
        if r.status == Status::Compensating && r.lease_until.is_none() {
            let _ = other.compensate(&charge).await;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    other.resolve(&charge, "refunded by hand").await.unwrap();
    let reads_before = hooks.gets.load(Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(20), caller)
        .await
        .expect("the rollback went on")
        .unwrap();
    assert!(result.is_err());
    let reads = hooks.gets.load(Ordering::SeqCst) - reads_before;
    assert!(reads < 50, "{reads} reads of single records while waiting");
    assert_eq!(record(&slow, &id).await.status, Status::RolledBack);
    assert_eq!(shop::count(&order.id, "release"), 1);
}

/// 12: a workflow whose every run crashes its process is parked as
/// `RecoveryFailed` (with an alert) after `recovery_attempts` recoveries,
/// and the operator's retry runs it again.
pub async fn a_workflow_that_crashes_every_run_is_parked(b: &Backend) {
    let rt = b.builder().recovery_attempts(2).build().unwrap();
    let order = shop::order(b, "crash-loop", 300, false);
    crash(&rt, &order, "after:2", shop::checkout(order.clone())).await;
    let id = workflow_id("shop.checkout", &order);
    let alerts = Arc::new(std::sync::Mutex::new(Vec::new()));
    for run in 2..=3 {
        b.pass_lease().await;
        // The recovery run crashes too: the pass dies with it.
        let parked = shop::crash_at(&order.id, "after:2");
        let pass = tokio::spawn({
            let r = rt.reconciler();
            async move { r.run_once().await }
        });
        parked.notified().await;
        pass.abort();
        let _ = pass.await;
        assert_eq!(record(&rt, &id).await.attempts, run);
    }
    b.pass_lease().await;
    let seen = alerts.clone();
    let report = rt
        .reconciler()
        .alert(move |r| seen.lock().unwrap().push(r.id.clone()))
        .run_once()
        .await
        .unwrap();
    assert_eq!(report.parked, std::slice::from_ref(&id), "{report:?}");
    let parked = record(&rt, &id).await;
    assert_eq!(parked.status, Status::RecoveryFailed);
    assert!(
        parked
            .error
            .as_deref()
            .is_some_and(|e| e.contains("run 3 times")),
        "{parked:?}"
    );
    assert_eq!(*alerts.lock().unwrap(), std::slice::from_ref(&id));
    assert!(rt.dead_letters().await.unwrap().iter().any(|d| d.id == id));

    // Fixed: the operator's retry runs it again, to its end.
    let retried = rt.retry(&id).await.unwrap();
    assert_eq!((retried.status, retried.attempts), (Status::Pending, 0));
    let done = reconcile_until(b, &rt, &id, Status::Completed).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(shop::count(&order.id, "charge"), 1);
}

/// 13: a workflow not done by its deadline is rolled back by the process
/// running it, and its caller is told why.
pub async fn a_workflow_past_its_deadline_is_rolled_back(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "deadline", 300, false);
    let stuck = shop::crash_at(&order.id, "stock");
    let started = std::time::Instant::now();
    let err = rt
        .scope(shop::checkout_deadline(order.clone()))
        .await
        .unwrap_err();
    stuck.notified().await;
    assert!(
        matches!(
            err.tempox(),
            Some(tempox::Error::DeadlineExceeded { deadline, .. }) if *deadline == Duration::from_secs(1)
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("deadline of 1s"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let id = workflow_id("shop.checkout_deadline", &order);
    let done = record(&rt, &id).await;
    assert_eq!(done.status, Status::RolledBack, "{done:?}");
    assert_eq!(
        (
            shop::count(&order.id, "charge"),
            shop::count(&order.id, "refund"),
            shop::count(&order.id, "release"),
            shop::count(&order.id, "ship")
        ),
        (1, 1, 1, 0)
    );
}

/// 13: a crashed workflow found past its deadline is rolled back by the
/// reconciler instead of being resumed.
pub async fn a_crashed_workflow_past_its_deadline_is_rolled_back_not_resumed(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "deadline-crash", 300, false);
    crash(
        &rt,
        &order,
        "inside:2",
        shop::checkout_deadline(order.clone()),
    )
    .await;
    b.pass(Duration::from_secs(1)).await;
    b.pass_lease().await;
    let id = workflow_id("shop.checkout_deadline", &order);
    let done = reconcile_until(b, &rt, &id, Status::RolledBack).await;
    assert!(
        done.error
            .as_deref()
            .is_some_and(|e| e.contains("deadline")),
        "{done:?}"
    );
    assert_eq!(
        (
            shop::count(&order.id, "charge"),
            shop::count(&order.id, "refund"),
            shop::count(&order.id, "release"),
            shop::count(&order.id, "ship")
        ),
        (1, 1, 1, 0)
    );
}

/// 3: `tempox recover <workflow-id>`, from a command line built into the
/// service (it links the workflow), resumes a crashed workflow now.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_command_line_recovers_a_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ops.db");
    let rt = tempox::Runtime::builder()
        .store(tempox::store::SqliteStore::open(&path).unwrap())
        .lease(Duration::from_millis(50))
        .build()
        .unwrap();
    let order = Order {
        id: "cli-recover".into(),
        cents: 300,
        fail_ship: false,
    };
    crash(&rt, &order, "after:2", shop::checkout(order.clone())).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let id = workflow_id("shop.checkout", &order);
    let args = [
        "tempox".to_owned(),
        "--store".to_owned(),
        format!("sqlite:{}", path.display()),
        "recover".to_owned(),
        id.to_string(),
    ];
    let code = tokio::task::spawn_blocking(move || tempox::cli::main_from(args))
        .await
        .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(record(&rt, &id).await.status, Status::Completed);
    assert_eq!(shop::count(&order.id, "charge"), 1);
    assert_eq!(shop::count(&order.id, "ship"), 1);
}
