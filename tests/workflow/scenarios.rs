//! The scenarios, each run on every backend.

use std::time::Duration;

use tempox::{Error, Key, Record, RecordId, Runtime, Status};
use tokio::task::JoinSet;

use crate::shop::{self, Backend, Order, ShopError};

pub(crate) fn workflow_id(name: &str, order: &Order) -> RecordId {
    RecordId::new(name, &Key::new(order.id.clone()).unwrap())
}

pub(crate) async fn record(rt: &Runtime, id: &RecordId) -> Record {
    rt.record(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record {id}"))
}

/// The statuses of the workflow's steps, by operation.
async fn step_statuses(rt: &Runtime, id: &RecordId) -> Vec<(String, Status)> {
    let mut steps = rt.steps(id).await.unwrap();
    steps.sort_by_key(|s| s.step);
    steps
        .into_iter()
        .map(|s| (s.op().to_owned(), s.status))
        .collect()
}

/// Waits until `id` reaches a status that is not active (polling the store: a
/// rollback running in a task of its own has no other signal).
async fn settled(rt: &Runtime, id: &RecordId) -> Record {
    for _ in 0..2_000 {
        let r = record(rt, id).await;
        if !r.status.is_active() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never settled");
}

pub async fn failing_at_step_three_compensates_two_then_one(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "fail3", 500, true);
    let err = rt.scope(shop::checkout(order.clone())).await.unwrap_err();
    assert!(
        matches!(err, ShopError::ShippingFailed(_)),
        "the caller gets the original error: {err:?}"
    );
    assert_eq!(
        shop::events(&order.id),
        ["reserve", "charge", "refund", "release"]
    );
    let id = workflow_id("shop.checkout", &order);
    assert_eq!(record(&rt, &id).await.status, Status::RolledBack);
    assert_eq!(
        step_statuses(&rt, &id).await,
        [
            ("shop.reserve".to_owned(), Status::Compensated),
            ("shop.charge".to_owned(), Status::Compensated),
            ("shop.ship".to_owned(), Status::Released),
        ]
    );
    // Compensated once each, even when asked again; asking again says why.
    let again = rt.scope(shop::checkout(order.clone())).await.unwrap_err();
    assert!(
        matches!(
            again.tempox(),
            Some(tempox::Error::Closed {
                status: Status::RolledBack,
                error: Some(_),
                ..
            })
        ),
        "{again:?}"
    );
    assert!(
        again.to_string().contains(&format!("(error: {err})")),
        "{again}"
    );
    assert_eq!(
        (
            shop::count(&order.id, "refund"),
            shop::count(&order.id, "release")
        ),
        (1, 1)
    );
}

pub async fn the_same_key_twice_replays(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "twice", 100, false);
    let first = rt.scope(shop::checkout(order.clone())).await.unwrap();
    let second = b
        .runtime()
        .scope(shop::checkout(order.clone()))
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(shop::events(&order.id), ["reserve", "charge", "ship"]);
    assert_eq!(
        record(&rt, &workflow_id("shop.checkout", &order))
            .await
            .status,
        Status::Completed
    );
}

pub async fn concurrent_runs_of_one_key_execute_once(b: &Backend) {
    let order = shop::order(b, "concurrent", 100, false);
    let mut runs = JoinSet::new();
    for _ in 0..10 {
        let (rt, order) = (b.runtime(), order.clone());
        runs.spawn(async move { rt.scope(shop::checkout(order)).await });
    }
    let outputs: Vec<String> = runs
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        outputs.iter().all(|o| *o == format!("ch-{}", order.id)),
        "{outputs:?}"
    );
    assert_eq!(shop::events(&order.id), ["reserve", "charge", "ship"]);
}

/// Runs `run` in a task until it parks at its crash point, then aborts it: the
/// process running the workflow dies there.
pub(crate) async fn crash<F>(rt: &Runtime, order: &Order, point: &str, run: F)
where
    F: std::future::Future<Output = Result<String, ShopError>> + Send + 'static,
{
    let parked = shop::crash_at(&order.id, point);
    let rt = rt.clone();
    let task = tokio::spawn(async move { rt.scope(run).await });
    parked.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
}

const POINTS: [&str; 7] = [
    "before:1", "inside:1", "after:1", "inside:2", "after:2", "inside:3", "after:3",
];

pub async fn crash_anywhere_then_resume_in_a_fresh_runtime(b: &Backend) {
    for point in POINTS {
        let order = shop::order(b, &format!("resume-{point}"), 300, false);
        crash(&b.runtime(), &order, point, shop::checkout(order.clone())).await;
        b.pass_lease().await;
        let id = workflow_id("shop.checkout", &order);
        let fresh = b.runtime();
        let done = fresh.recover_workflow(&id).await.unwrap();
        assert_eq!(done.status, Status::Completed, "crash at {point}");
        let effects = shop::happened(&order.id);
        assert_eq!(
            shop::count(&order.id, "charge"),
            1,
            "crash at {point}: charged once"
        );
        for e in ["reserve", "ship"] {
            assert!(
                effects.contains(e),
                "crash at {point}: {e} missing from {effects:?}"
            );
        }
        assert!(
            !effects.contains("refund") && !effects.contains("release"),
            "crash at {point}: {effects:?}"
        );
        assert_eq!(
            fresh.scope(shop::checkout(order.clone())).await.unwrap(),
            format!("ch-{}", order.id)
        );
    }
}

pub async fn crash_anywhere_then_roll_back_in_a_fresh_runtime(b: &Backend) {
    for point in POINTS {
        let order = shop::order(b, &format!("rollback-{point}"), 300, false);
        crash(
            &b.runtime(),
            &order,
            point,
            shop::checkout_rollback(order.clone()),
        )
        .await;
        b.pass_lease().await;
        let id = workflow_id("shop.checkout_rollback", &order);
        let done = b.runtime().recover_workflow(&id).await.unwrap();
        assert_eq!(done.status, Status::RolledBack, "crash at {point}");
        // Each effect was applied once and compensated once, or never applied.
        let (charged, refunded) = (
            shop::count(&order.id, "charge"),
            shop::count(&order.id, "refund"),
        );
        assert!(
            charged <= 1 && refunded == charged,
            "crash at {point}: {:?}",
            shop::events(&order.id)
        );
        let reserved = shop::happened(&order.id).contains("reserve");
        assert_eq!(
            shop::count(&order.id, "release"),
            usize::from(reserved),
            "crash at {point}"
        );
    }
}

pub async fn a_changed_step_is_non_deterministic(b: &Backend) {
    let id_text = format!("wobbly-{}", b.name);
    let parked = shop::crash_at(&id_text, "after:1");
    let rt = b.runtime();
    let task = tokio::spawn({
        let (rt, id) = (rt.clone(), id_text.clone());
        async move { rt.scope(shop::wobbly(id)).await }
    });
    parked.notified().await;
    task.abort();
    let _ = task.await;
    b.pass_lease().await;
    // The code changed under the record: step 1 is now another operation.
    shop::ship_first(&id_text);
    let err = b
        .runtime()
        .scope(shop::wobbly(id_text.clone()))
        .await
        .unwrap_err();
    match err.tempox() {
        Some(Error::NonDeterministic {
            step,
            recorded,
            called,
            ..
        }) => {
            assert_eq!(
                (*step, recorded.as_str(), called.as_str()),
                (1, "shop.reserve", "shop.ship")
            );
        }
        other => panic!("expected NonDeterministic, got {other:?} ({err})"),
    }
    assert!(
        err.to_string()
            .contains("step 1 was `shop.reserve` and is now `shop.ship`"),
        "{err}"
    );
    assert_eq!(
        shop::count(&id_text, "ship"),
        0,
        "the changed step never ran"
    );
}

pub async fn cancelling_the_caller_during_rollback_does_not_stop_it(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "cancel-rollback", 700, true);
    let gate = shop::slow_refunds(&order.id);
    let caller = tokio::spawn({
        let (rt, order) = (rt.clone(), order.clone());
        async move { rt.scope(shop::checkout(order)).await }
    });
    // The rollback is under way (the refund has started): the caller goes away.
    while !shop::events(&order.id).contains(&"refund-started".to_owned()) {
        tokio::task::yield_now().await;
    }
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    gate.add_permits(10);
    let id = workflow_id("shop.checkout", &order);
    assert_eq!(settled(&rt, &id).await.status, Status::RolledBack);
    assert_eq!(
        (
            shop::count(&order.id, "refund"),
            shop::count(&order.id, "release")
        ),
        (1, 1)
    );
}

pub async fn a_dead_lettered_compensation_stops_the_rollback_until_an_operator_acts(b: &Backend) {
    let rt = b.runtime_with(2);
    let order = shop::order(b, "dead-letter", 900, true);
    shop::fail_refunds(&order.id, true);
    assert!(rt.scope(shop::checkout(order.clone())).await.is_err());
    let id = workflow_id("shop.checkout", &order);
    assert_eq!(record(&rt, &id).await.status, Status::PartiallyRolledBack);
    let steps = step_statuses(&rt, &id).await;
    assert_eq!(
        steps[0],
        ("shop.reserve".to_owned(), Status::Completed),
        "strict: not passed"
    );
    assert_eq!(
        steps[1],
        ("shop.charge".to_owned(), Status::CompensationFailed)
    );
    let parked = rt.dead_letters().await.unwrap();
    let charge_step = parked
        .iter()
        .find(|r| r.workflow.as_ref() == Some(&id))
        .expect("the charge is parked");
    assert_eq!(charge_step.error.as_deref(), Some("refund api down"));
    assert_eq!(shop::count(&order.id, "refund-failed"), 2);

    // The operator fixes the refund api and retries; recovery finishes the job.
    shop::fail_refunds(&order.id, false);
    rt.retry(&charge_step.id).await.unwrap();
    let done = b.runtime().recover_workflow(&id).await.unwrap();
    assert_eq!(done.status, Status::RolledBack);
    let tail: Vec<_> = shop::events(&order.id)
        .into_iter()
        .filter(|e| e == "refund" || e == "release")
        .collect();
    assert_eq!(tail, ["refund", "release"]);
}

pub async fn rollback_continue_goes_past_a_dead_letter(b: &Backend) {
    let rt = b.runtime_with(1);
    let order = shop::order(b, "continue", 900, true);
    shop::fail_refunds(&order.id, true);
    assert!(
        rt.scope(shop::checkout_continue(order.clone()))
            .await
            .is_err()
    );
    let id = workflow_id("shop.checkout_continue", &order);
    assert_eq!(record(&rt, &id).await.status, Status::PartiallyRolledBack);
    let steps = step_statuses(&rt, &id).await;
    assert_eq!(
        steps[0],
        ("shop.reserve".to_owned(), Status::Compensated),
        "went past the dead letter"
    );
    assert_eq!(
        steps[1],
        ("shop.charge".to_owned(), Status::CompensationFailed)
    );
    assert_eq!(shop::count(&order.id, "release"), 1);
}

pub async fn a_nested_workflow_is_a_step_and_is_rolled_back_with_its_parent(b: &Backend) {
    let rt = b.runtime();
    let order = shop::order(b, "nested", 400, true);
    assert!(rt.scope(shop::outer(order.clone())).await.is_err());
    let outer = workflow_id("shop.outer", &order);
    assert_eq!(record(&rt, &outer).await.status, Status::RolledBack);
    let steps = rt.steps(&outer).await.unwrap();
    let inner = steps
        .iter()
        .find(|s| s.op() == "shop.inner")
        .expect("the inner workflow is step 1");
    assert_eq!(inner.step, Some(1));
    assert_eq!(record(&rt, &inner.id).await.status, Status::RolledBack);
    assert_eq!(
        shop::events(&order.id),
        ["reserve", "charge", "refund", "release"]
    );
}
