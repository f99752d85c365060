//! The compensation catalog and invariant 5: a record alone is enough to
//! compensate it, in any runtime, exactly once to success.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use tempox::store::MemoryStore;
use tempox::{Error, Runtime, Status, idempotent, non_idempotent};

use crate::common::{Order, TestError, order, runtime};
use crate::support::only_record;

pub mod payments {
    use super::*;

    pub static REFUNDS: AtomicU32 = AtomicU32::new(0);
    pub static REFUNDED_CENTS: AtomicU32 = AtomicU32::new(0);

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Charge {
        pub id: String,
        pub cents: u32,
    }

    #[idempotent]
    pub async fn refund(charge: Charge) -> Result<(), TestError> {
        REFUNDS.fetch_add(1, SeqCst);
        REFUNDED_CENTS.fetch_add(charge.cents, SeqCst);
        Ok(())
    }
}

#[non_idempotent(compensate = payments::refund)]
async fn charge(order: &Order) -> Result<payments::Charge, TestError> {
    Ok(payments::Charge {
        id: format!("ch_{}", order.id),
        cents: u32::try_from(order.cents).unwrap_or(u32::MAX),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv5_a_fresh_runtime_compensates_from_the_record_alone_once() {
    let store = MemoryStore::new();
    let original = runtime(store.clone());
    original.scope(charge(&order("o-5", 250))).await.unwrap();
    let op = format!("{}::charge", module_path!());
    let id = only_record(&store, &op).await.id;

    // New runtimes over the same store, with no reference to the call: they find
    // the compensation by the operation's name in the link-time catalog.
    let a = runtime(store.clone());
    let b = runtime(store.clone());
    let (ra, rb) = tokio::join!(a.compensate(&id), b.compensate(&id));
    let outcomes = [ra, rb];
    let won: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    assert_eq!(won[0].status, Status::Compensated);
    for lost in outcomes.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(lost, Error::Fenced { .. } | Error::WrongStatus { .. }),
            "{lost:?}"
        );
    }
    assert_eq!(payments::REFUNDS.load(SeqCst), 1);
    assert_eq!(payments::REFUNDED_CENTS.load(SeqCst), 250);
    let r = only_record(&store, &op).await;
    assert_eq!((r.status, r.attempts), (Status::Compensated, 1));
    // Compensating again is refused: it is done.
    assert!(matches!(
        a.compensate(&id).await,
        Err(Error::WrongStatus {
            status: Status::Compensated,
            ..
        })
    ));
    // A compensated key can neither replay nor run again.
    let closed = a.scope(charge(&order("o-5", 250))).await;
    assert!(
        closed.is_ok(),
        "an unkeyed charge is a new effect each call"
    );
}

#[test]
fn the_catalog_knows_every_operation_and_its_compensation() {
    let rt = runtime(MemoryStore::new());
    let entry = rt
        .catalog()
        .get(&format!("{}::charge", module_path!()))
        .unwrap();
    assert_eq!(entry.kind, tempox::Kind::NonIdempotent);
    assert_eq!(
        format!("{:?}", entry.compensation),
        format!("Call({}::payments::refund)", module_path!())
    );
    assert_eq!(entry.location.file, file!());
}

mod failing {
    use super::*;

    pub static ATTEMPTS: AtomicU32 = AtomicU32::new(0);

    #[idempotent]
    pub async fn release(slot: &u32) -> Result<(), TestError> {
        let n = ATTEMPTS.fetch_add(1, SeqCst) + 1;
        Err(TestError::Boom(n + slot))
    }

    #[idempotent(key = slot, compensate = release)]
    pub async fn hold(slot: u32) -> Result<u32, TestError> {
        Ok(slot)
    }
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_is_dead_lettered_with_its_error() {
    use failing::*;
    let store = MemoryStore::new();
    let rt = Runtime::builder()
        .store(store.clone())
        .compensation_attempts(2)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    rt.scope(hold(0)).await.unwrap();
    let op = format!("{}::failing::hold", module_path!());
    let id = only_record(&store, &op).await.id;

    let first = rt.compensate(&id).await.unwrap_err();
    assert!(
        matches!(&first, Error::Compensation { message, .. } if message == "boom 1"),
        "{first:?}"
    );
    let r = only_record(&store, &op).await;
    assert_eq!((r.status, r.attempts), (Status::Compensating, 1));
    assert!(r.due_at.is_some(), "a retry is scheduled");

    rt.compensate(&id).await.unwrap_err();
    let r = only_record(&store, &op).await;
    assert_eq!((r.status, r.attempts), (Status::CompensationFailed, 2));
    assert_eq!(r.error.as_deref(), Some("boom 2"));
    assert_eq!(r.output.as_deref(), Some(&b"0"[..]), "the output is kept");
    assert_eq!(rt.dead_letters().await.unwrap().len(), 1);

    // Operator: retry sends it back with attempts reset; resolve closes it.
    let retried = rt.retry(&id).await.unwrap();
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
    rt.compensate(&id).await.unwrap_err();
    rt.compensate(&id).await.unwrap_err();
    let resolved = rt.resolve(&id, "released by hand").await.unwrap();
    assert_eq!(resolved.status, Status::Resolved);
    assert!(
        resolved
            .note
            .as_deref()
            .is_some_and(|n| n.ends_with("resolved: released by hand"))
    );
    assert!(rt.dead_letters().await.unwrap().is_empty());
    assert!(matches!(
        rt.retry(&id).await,
        Err(Error::WrongStatus { .. })
    ));
    assert_eq!(ATTEMPTS.load(SeqCst), 4);
}

#[tokio::test]
async fn compensate_noop_closes_the_record_without_running_anything() {
    #[non_idempotent(key = id, compensate = noop)]
    async fn notify(id: u32) -> Result<u32, TestError> {
        Ok(id)
    }
    let store = MemoryStore::new();
    let rt = runtime(store.clone());
    rt.scope(notify(9)).await.unwrap();
    let id = only_record(&store, &format!("{}::notify", module_path!()))
        .await
        .id;
    let r = rt.compensate(&id).await.unwrap();
    assert_eq!(r.status, Status::Compensated);
    let closed = rt.scope(notify(9)).await.unwrap_err();
    assert!(
        matches!(
            closed.tempox(),
            Some(Error::Closed {
                status: Status::Compensated,
                ..
            })
        ),
        "{closed:?}"
    );
}
