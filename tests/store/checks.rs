//! The checks, each a promise documented on `tempox::store::Store`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tempox::record::{
    AttemptsChange, ClaimRequest, Claimed, LeaseChange, OnExpired, Timestamp, Transition,
    Transitioned,
};
use tempox::store::{Query, Store};
use tempox::{Fingerprint, Key, Kind, Record, RecordId, Status, StoreErrorKind};

use crate::fixture::Fixture;

/// Leases and retentions are short so real-clock backends pass them quickly.
const LEASE: Duration = Duration::from_millis(300);
const PAST_LEASE: Duration = Duration::from_millis(400);

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, &Key::new(key).unwrap())
}

pub fn request(op: &str, key: &str, args: &str) -> ClaimRequest {
    ClaimRequest {
        id: id(op, key),
        kind: Kind::Idempotent,
        fingerprint: Fingerprint::of(args).unwrap(),
        input: serde_json::to_vec(args).unwrap().into(),
        lease: LEASE,
        on_expired: OnExpired::TakeOver,
        workflow: None,
        step: None,
    }
}

async fn acquire(store: &dyn Store, req: &ClaimRequest) -> Record {
    match store.claim(req).await.unwrap() {
        Claimed::Acquired { record, .. } => record,
        other => panic!("expected to acquire {}, got {other:?}", req.id),
    }
}

pub fn complete(r: &Record, output: &[u8]) -> Transition {
    let mut t = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Completed);
    t.output = Some(output.to_vec().into());
    t.retention = Some(Duration::from_secs(3600));
    t
}

async fn applied(store: &dyn Store, t: &Transition) -> Record {
    match store.transition(t).await.unwrap() {
        Transitioned::Applied(r) => r,
        other => panic!("expected {} -> {} to apply, got {other:?}", t.from, t.to),
    }
}

pub async fn claim_writes_a_pending_record_with_a_lease(f: &Fixture) {
    let store = &*f.store;
    let before = store.now().await.unwrap();
    let req = request("conf.claim", "k1", "a");
    let r = acquire(store, &req).await;
    assert_eq!(
        (r.status, r.attempts, r.kind),
        (Status::Pending, 1, Kind::Idempotent)
    );
    assert_eq!(r.id, req.id);
    assert_eq!(r.fingerprint, req.fingerprint);
    let until = r.lease_until.expect("a lease");
    assert!(
        until >= before.plus(LEASE),
        "lease ends {until}, claimed at {before}"
    );
    assert_eq!(
        r.due_at,
        Some(until),
        "an active record is due when its lease ends"
    );
    assert_eq!(store.get(&req.id).await.unwrap(), Some(r));
    // What a claim answers is what it wrote, for a workflow's step too.
    let step = ClaimRequest {
        workflow: Some(id("conf.flow", "w1")),
        step: Some(3),
        kind: Kind::NonIdempotent,
        ..request("conf.claim", "k2", "b")
    };
    let s = acquire(store, &step).await;
    assert_eq!(
        (s.workflow.clone(), s.step),
        (step.workflow.clone(), Some(3))
    );
    assert_eq!(store.get(&step.id).await.unwrap(), Some(s));
}

pub async fn claim_is_atomic_under_contention(f: &Fixture) {
    contend(vec![f.store.clone(); 32]).await;
}

pub async fn claim_is_atomic_across_handles(f: &Fixture) {
    let handles = (0..32)
        .map(|i| {
            if i % 2 == 0 {
                f.store.clone()
            } else {
                f.other.clone()
            }
        })
        .collect();
    contend(handles).await;
}

/// Invariant 1: of many simultaneous claims of one key, exactly one wins.
async fn contend(handles: Vec<Arc<dyn Store>>) {
    let key = format!("race-{}", fastrand_key());
    let tasks: Vec<_> = handles
        .into_iter()
        .map(|store| {
            let req = request("conf.race", &key, "same");
            tokio::spawn(async move { store.claim(&req).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    let mut tokens = HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Claimed::Acquired { record, .. } => {
                won += 1;
                tokens.insert(record.token);
            }
            Claimed::Existing(record) => {
                tokens.insert(record.token);
                assert_eq!(record.status, Status::Pending);
            }
            Claimed::MarkedUnknown(r) => panic!("unexpected {r:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one claim wins");
    assert_eq!(tokens.len(), 1, "everyone sees the winner's token");
}

fn fastrand_key() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

pub async fn claim_answers_existing_records_without_writing(f: &Fixture) {
    let store = &*f.store;
    let req = request("conf.existing", "k", "a");
    let r = acquire(store, &req).await;
    // While the lease is live: the running record, unchanged.
    assert_eq!(
        store.claim(&req).await.unwrap(),
        Claimed::Existing(r.clone())
    );
    let done = applied(store, &complete(&r, b"42")).await;
    assert_eq!(
        store.claim(&req).await.unwrap(),
        Claimed::Existing(done.clone())
    );
    // Other arguments: the record is returned for the caller to refuse.
    let other = request("conf.existing", "k", "b");
    assert_eq!(
        store.claim(&other).await.unwrap(),
        Claimed::Existing(done.clone())
    );
    assert_eq!(store.get(&req.id).await.unwrap(), Some(done));
}

pub async fn claim_takes_a_released_key_for_any_request(f: &Fixture) {
    let store = &*f.store;
    let first = acquire(store, &request("conf.released", "k", "a")).await;
    let mut t = Transition::new(
        first.id.clone(),
        Status::Pending,
        first.token,
        Status::Released,
    );
    t.error = Some("declined".into());
    t.retention = Some(Duration::from_secs(60));
    applied(store, &t).await;
    let again = request("conf.released", "k", "other arguments");
    match store.claim(&again).await.unwrap() {
        Claimed::Acquired { record, previous } => {
            assert_eq!(previous, Some(Status::Released));
            assert_eq!((record.status, record.attempts), (Status::Pending, 2));
            assert!(record.token > first.token);
            assert_eq!(record.fingerprint, again.fingerprint);
            assert_eq!(record.input, again.input);
            assert_eq!(record.expires_at, None);
            assert_eq!(
                record.error.as_deref(),
                Some("declined"),
                "the last error is kept"
            );
        }
        other => panic!("expected to acquire, got {other:?}"),
    }
}

pub async fn claim_takes_over_an_expired_lease_with_a_newer_token(f: &Fixture) {
    let store = &*f.store;
    let req = request("conf.takeover", "k", "a");
    let first = acquire(store, &req).await;
    f.pass(PAST_LEASE).await;
    match f.other.claim(&req).await.unwrap() {
        Claimed::Acquired { record, previous } => {
            assert_eq!(previous, Some(Status::Pending));
            assert!(record.token > first.token);
            assert_eq!(record.attempts, 2);
            assert!(record.lease_until > first.lease_until);
        }
        other => panic!("expected a takeover, got {other:?}"),
    }
    // The stale holder is fenced off.
    let stale = store.transition(&complete(&first, b"1")).await.unwrap();
    assert!(
        matches!(stale, Transitioned::Conflict(Some(_))),
        "{stale:?}"
    );
}

pub async fn claim_never_takes_over_for_other_arguments(f: &Fixture) {
    let store = &*f.store;
    let first = acquire(store, &request("conf.takeover-args", "k", "a")).await;
    f.pass(PAST_LEASE).await;
    let other = request("conf.takeover-args", "k", "b");
    assert_eq!(store.claim(&other).await.unwrap(), Claimed::Existing(first));
}

pub async fn claim_parks_an_expired_non_idempotent_call(f: &Fixture) {
    let store = &*f.store;
    let mut req = request("conf.unknown", "k", "a");
    req.kind = Kind::NonIdempotent;
    req.on_expired = OnExpired::MarkUnknown;
    let first = acquire(store, &req).await;
    f.pass(PAST_LEASE).await;
    match store.claim(&req).await.unwrap() {
        Claimed::MarkedUnknown(r) => {
            assert_eq!(r.status, Status::OutcomeUnknown);
            assert_eq!(r.token, first.token);
            assert_eq!((r.lease_until, r.expires_at), (None, None));
            assert!(r.due_at.is_some(), "a new dead letter is due for its alert");
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    // Only once: the next claim finds the parked record.
    let again = store.claim(&req).await.unwrap();
    assert!(
        matches!(again, Claimed::Existing(ref r) if r.status == Status::OutcomeUnknown),
        "{again:?}"
    );
}

pub async fn transition_is_a_compare_and_set_on_status_and_token(f: &Fixture) {
    let store = &*f.store;
    let r = acquire(store, &request("conf.cas", "k", "a")).await;
    let mut wrong_token = complete(&r, b"1");
    wrong_token.token += 1;
    assert_eq!(
        store.transition(&wrong_token).await.unwrap(),
        Transitioned::Conflict(Some(r.clone()))
    );
    let mut wrong_status = Transition::new(
        r.id.clone(),
        Status::Completed,
        r.token,
        Status::Compensating,
    );
    wrong_status.lease = LeaseChange::Acquire(LEASE);
    assert_eq!(
        store.transition(&wrong_status).await.unwrap(),
        Transitioned::Conflict(Some(r.clone()))
    );
    let missing = complete(
        &Record {
            id: id("conf.cas", "nobody"),
            ..r.clone()
        },
        b"1",
    );
    assert_eq!(
        store.transition(&missing).await.unwrap(),
        Transitioned::Conflict(None)
    );
    assert_eq!(
        store.get(&r.id).await.unwrap(),
        Some(r.clone()),
        "nothing was written"
    );
    // The right (status, token) wins once; replaying the same request then conflicts.
    applied(store, &complete(&r, b"1")).await;
    assert!(matches!(
        store.transition(&complete(&r, b"2")).await.unwrap(),
        Transitioned::Conflict(Some(_))
    ));
}

pub async fn apply_is_the_same_compare_and_set_without_the_record(f: &Fixture) {
    let store = &*f.store;
    let r = acquire(store, &request("conf.apply", "k", "a")).await;
    let mut stale = complete(&r, b"1");
    stale.token += 1;
    assert!(
        !store.apply(&stale).await.unwrap(),
        "a stale token is refused"
    );
    assert_eq!(
        store.get(&r.id).await.unwrap(),
        Some(r.clone()),
        "nothing was written"
    );
    let illegal = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Compensated);
    assert_eq!(
        store.apply(&illegal).await.unwrap_err().kind(),
        StoreErrorKind::Invalid
    );
    assert!(store.apply(&complete(&r, b"{\"ok\":2}")).await.unwrap());
    let done = store.get(&r.id).await.unwrap().expect("the record");
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.output.as_deref(), Some(&b"{\"ok\":2}"[..]));
    assert_eq!((done.lease_until, done.due_at), (None, None));
    assert!(done.expires_at.is_some(), "retention is kept");
    assert!(
        !store.apply(&complete(&r, b"3")).await.unwrap(),
        "applied once"
    );
    // The record is in its status's listing, and out of the pending one.
    for (status, expected) in [(Status::Completed, true), (Status::Pending, false)] {
        let listed = store.list(&Query::statuses(&[status])).await.unwrap();
        assert_eq!(listed.iter().any(|l| l.id == r.id), expected, "{status}");
    }
}

/// Every kind of change (lease acquired and cleared, attempts counted
/// and set, notes appended, errors, a retry scheduled, dead letters entered,
/// their alerts claimed and acknowledged, retention) writes the same record
/// through `apply` as through `transition`: stores may answer `apply` by
/// another path (Redis and SQLite do when the change needs nothing of the
/// record but its status and token).
pub async fn apply_writes_what_transition_writes(f: &Fixture) {
    let store = &*f.store;
    let (mut full, mut quiet) = (
        acquire(store, &request("conf.apply_same", "full", "a")).await,
        acquire(store, &request("conf.apply_same", "quiet", "a")).await,
    );
    type Step = fn(&mut Transition);
    let steps: [(Status, Status, Step); 7] = [
        (Status::Pending, Status::Completed, |t| {
            t.output = Some(b"{\"ok\":1}".to_vec().into());
            t.retention = Some(Duration::from_secs(3600));
        }),
        (Status::Completed, Status::Compensating, |t| {
            t.lease = LeaseChange::Acquire(Duration::from_secs(30));
            t.attempts = AttemptsChange::Increment;
            t.note = Some("claimed".into());
        }),
        (Status::Compensating, Status::Compensating, |t| {
            t.lease = LeaseChange::Clear;
            t.attempts = AttemptsChange::Set(3);
            t.error = Some("refund api down".into());
            t.retry_after = Some(Duration::from_secs(5));
        }),
        (Status::Compensating, Status::CompensationFailed, |t| {
            t.lease = LeaseChange::Clear;
            t.attempts = AttemptsChange::Set(7);
            t.error = Some("boom".into());
            t.note = Some("parked".into());
        }),
        (
            Status::CompensationFailed,
            Status::CompensationFailed,
            |t| {
                t.lease = LeaseChange::Acquire(Duration::from_secs(30));
                t.retry_after = Some(Duration::from_secs(30));
            },
        ),
        (
            Status::CompensationFailed,
            Status::CompensationFailed,
            |_| {},
        ),
        (Status::CompensationFailed, Status::Resolved, |t| {
            t.note = Some("resolved".into());
            t.retention = Some(Duration::from_secs(3600));
        }),
    ];
    // What must agree: everything but the ids and the clock's readings; the
    // times as offsets from the change's own (no step keeps an older lease).
    let shape = |r: &Record| {
        let after = |t: Option<Timestamp>| {
            t.map(|t| i128::from(t.as_millis()) - i128::from(r.updated_at.as_millis()))
        };
        (
            r.status,
            r.attempts,
            r.output.clone(),
            r.error.clone(),
            r.note.clone(),
            after(r.lease_until),
            after(r.due_at),
            after(r.expires_at),
        )
    };
    for (from, to, change) in steps {
        let tokens = (full.token, quiet.token);
        let mut t = Transition::new(full.id.clone(), from, full.token, to);
        change(&mut t);
        full = applied(store, &t).await;
        let mut t = Transition::new(quiet.id.clone(), from, quiet.token, to);
        change(&mut t);
        assert!(store.apply(&t).await.unwrap(), "{from} -> {to}");
        quiet = store.get(&quiet.id).await.unwrap().expect("the record");
        assert_eq!(shape(&quiet), shape(&full), "after {from} -> {to}");
        assert_eq!(
            quiet.token != tokens.1,
            full.token != tokens.0,
            "a new token after {from} -> {to}"
        );
        assert_eq!(store.get(&full.id).await.unwrap().as_ref(), Some(&full));
        let listed = store.list(&Query::statuses(&[to])).await.unwrap();
        for r in [&full, &quiet] {
            assert!(listed.iter().any(|l| l.id == r.id), "{} in {to}", r.id);
        }
        if from != to {
            let left = store.list(&Query::statuses(&[from])).await.unwrap();
            for r in [&full, &quiet] {
                assert!(!left.iter().any(|l| l.id == r.id), "{} left {from}", r.id);
            }
        }
    }
}

pub async fn transition_refuses_what_the_table_does_not_allow(f: &Fixture) {
    let store = &*f.store;
    let r = acquire(store, &request("conf.illegal", "k", "a")).await;
    let illegal = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Compensated);
    let err = store.transition(&illegal).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid);
    assert!(err.to_string().contains("pending -> compensated"), "{err}");
    assert_eq!(store.get(&r.id).await.unwrap(), Some(r));
}

pub async fn transition_records_outcome_retention_and_due_time(f: &Fixture) {
    let store = &*f.store;
    let r = acquire(store, &request("conf.outcome", "k", "a")).await;
    let now = store.now().await.unwrap();
    let done = applied(store, &complete(&r, b"{\"ok\":1}")).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.output.as_deref(), Some(&b"{\"ok\":1}"[..]));
    assert_eq!((done.lease_until, done.due_at), (None, None));
    let expires = done.expires_at.expect("final records expire");
    assert!(expires >= now.plus(Duration::from_secs(3600)));
    // Claiming a compensation: a new token and lease, attempts set.
    let mut claim = Transition::new(
        done.id.clone(),
        Status::Completed,
        done.token,
        Status::Compensating,
    );
    claim.lease = LeaseChange::Acquire(LEASE);
    claim.attempts = AttemptsChange::Set(1);
    let held = applied(store, &claim).await;
    assert!(held.token > done.token);
    assert_eq!((held.attempts, held.expires_at), (1, None));
    assert_eq!(held.due_at, held.lease_until);
    // A failed run: lease dropped, retry scheduled, error and note kept.
    let mut retry = Transition::new(
        held.id.clone(),
        Status::Compensating,
        held.token,
        Status::Compensating,
    );
    retry.retry_after = Some(Duration::from_secs(5));
    retry.error = Some("refund api down".into());
    retry.note = Some("first note".into());
    let scheduled = applied(store, &retry).await;
    assert_eq!(scheduled.lease_until, None);
    let due = scheduled.due_at.expect("a retry is due");
    assert!(due >= now.plus(Duration::from_secs(5)));
    assert_eq!(scheduled.error.as_deref(), Some("refund api down"));
    let mut noted = Transition::new(
        held.id.clone(),
        Status::Compensating,
        held.token,
        Status::CompensationFailed,
    );
    noted.note = Some("second note".into());
    let parked = applied(store, &noted).await;
    assert_eq!(parked.note.as_deref(), Some("first note\nsecond note"));
    assert_eq!(parked.expires_at, None, "dead letters never expire");
    assert!(
        parked.due_at.is_some(),
        "a new dead letter is due for its alert"
    );
    // Claiming the alert: a new token, due again after the lease unless
    // acknowledged; a second claim with the old token loses.
    let mut claim = Transition::new(
        parked.id.clone(),
        Status::CompensationFailed,
        parked.token,
        Status::CompensationFailed,
    );
    claim.lease = LeaseChange::Acquire(LEASE);
    claim.retry_after = Some(LEASE);
    let before_claim = store.now().await.unwrap();
    let claimed = applied(store, &claim).await;
    assert!(claimed.token > parked.token);
    let again = claimed.due_at.expect("a claimed alert is due again");
    assert!(again >= before_claim.plus(LEASE), "due at {again}");
    assert_eq!((claimed.lease_until, claimed.expires_at), (None, None));
    assert!(matches!(
        store.transition(&claim).await.unwrap(),
        Transitioned::Conflict(Some(_))
    ));
    // Acknowledging it: a new token, no longer due; a second acknowledgement
    // with the old token loses.
    let mut ack = Transition::new(
        parked.id.clone(),
        Status::CompensationFailed,
        claimed.token,
        Status::CompensationFailed,
    );
    ack.lease = LeaseChange::Acquire(LEASE);
    let acked = applied(store, &ack).await;
    assert!(acked.token > claimed.token);
    assert_eq!(
        (acked.due_at, acked.lease_until, acked.expires_at),
        (None, None, None)
    );
    assert!(matches!(
        store.transition(&ack).await.unwrap(),
        Transitioned::Conflict(Some(_))
    ));
}

pub async fn tokens_increase_across_takeovers_and_recreation(f: &Fixture) {
    let store = &*f.store;
    let req = request("conf.tokens", "k", "a");
    let mut last = acquire(store, &req).await.token;
    for _ in 0..3 {
        f.pass(PAST_LEASE).await;
        let r = acquire(store, &req).await;
        assert!(r.token > last, "{} after {last}", r.token);
        last = r.token;
    }
    // Completed with a short retention, removed, then created again: still newer.
    let r = store.get(&req.id).await.unwrap().unwrap();
    let mut t = complete(&r, b"1");
    t.retention = Some(Duration::from_millis(1));
    applied(store, &t).await;
    f.pass(Duration::from_millis(20)).await;
    assert!(store.expire(1000).await.unwrap() >= 1);
    assert_eq!(store.get(&req.id).await.unwrap(), None);
    let reborn = acquire(store, &req).await;
    assert!(reborn.token > last, "{} after {last}", reborn.token);
    assert_eq!(reborn.attempts, 1);
}

pub async fn renew_extends_only_the_holders_lease(f: &Fixture) {
    let store = &*f.store;
    let req = request("conf.renew", "k", "a");
    let r = acquire(store, &req).await;
    f.pass(Duration::from_millis(100)).await;
    let until = store
        .renew(&r.id, Status::Pending, r.token, LEASE)
        .await
        .unwrap()
        .expect("renewed");
    assert!(Some(until) > r.lease_until);
    let now = store.get(&r.id).await.unwrap().unwrap();
    assert_eq!((now.lease_until, now.due_at), (Some(until), Some(until)));
    // Renewed leases keep the record from being taken over.
    f.pass(Duration::from_millis(250)).await;
    assert!(matches!(
        f.other.claim(&req).await.unwrap(),
        Claimed::Existing(_)
    ));
    assert_eq!(
        store
            .renew(&r.id, Status::Pending, r.token + 1, LEASE)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .renew(&r.id, Status::Completed, r.token, LEASE)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .renew(&id("conf.renew", "nobody"), Status::Pending, 1, LEASE)
            .await
            .unwrap(),
        None
    );
}

pub async fn due_lists_expired_leases_and_retries_earliest_first(f: &Fixture) {
    let store = &*f.store;
    let op = format!("conf.due.{}", fastrand_key());
    let a = acquire(store, &request(&op, "a", "a")).await;
    f.pass(Duration::from_millis(50)).await;
    let b = acquire(store, &request(&op, "b", "b")).await;
    let done = acquire(store, &request(&op, "c", "c")).await;
    applied(store, &complete(&done, b"1")).await;
    let ours = |rs: Vec<Record>| {
        rs.into_iter()
            .filter(|r| r.op() == op)
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert!(
        ours(store.due(100).await.unwrap()).is_empty(),
        "live leases are not due"
    );
    f.pass(PAST_LEASE).await;
    assert_eq!(
        ours(store.due(1000).await.unwrap()),
        vec![a.id.clone(), b.id.clone()]
    );
    let first = store.due(1).await.unwrap();
    assert_eq!(first.len(), 1);
}

pub async fn expire_removes_only_final_records_past_retention(f: &Fixture) {
    let store = &*f.store;
    let op = format!("conf.expire.{}", fastrand_key());
    let short = Duration::from_millis(1);
    // Final, past retention: removed.
    let done = acquire(store, &request(&op, "done", "a")).await;
    let mut t = complete(&done, b"1");
    t.retention = Some(short);
    applied(store, &t).await;
    // Pending (its lease runs out too): kept.
    let pending = acquire(store, &request(&op, "pending", "a")).await;
    // A dead letter: kept forever.
    let parked = acquire(store, &request(&op, "parked", "a")).await;
    let mut t = Transition::new(
        parked.id.clone(),
        Status::Pending,
        parked.token,
        Status::OutcomeUnknown,
    );
    t.retention = Some(short);
    applied(store, &t).await;
    // A workflow rolling back: kept.
    let mut wf = request(&op, "workflow", "a");
    wf.kind = Kind::Workflow;
    let wf = acquire(store, &wf).await;
    let mut t = Transition::new(
        wf.id.clone(),
        Status::Pending,
        wf.token,
        Status::RollingBack,
    );
    t.retention = Some(short);
    applied(store, &t).await;
    f.pass(PAST_LEASE).await;
    let mut removed = 0;
    loop {
        let n = store.expire(1000).await.unwrap();
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert!(removed >= 1);
    assert_eq!(store.get(&done.id).await.unwrap(), None);
    for kept in [&pending.id, &parked.id, &wf.id] {
        assert!(
            store.get(kept).await.unwrap().is_some(),
            "{kept} was removed"
        );
    }
}

pub async fn records_round_trip_byte_for_byte(f: &Fixture) {
    let store = &*f.store;
    let mut req = request("conf.bytes", "ключ/with spaces & \"quotes\" {braces}", "a");
    req.input = vec![0u8, 255, 1, b'{', 0x80, 0xfe].into();
    req.workflow = Some(id("conf.workflow", "w-1"));
    req.step = Some(7);
    let r = acquire(store, &req).await;
    assert_eq!(r.input, req.input);
    let mut t = complete(&r, &[]);
    t.output = Some(vec![0xff, 0x00, b'"', 0xc3].into());
    t.error = Some("ошибка: \u{1F4A5}\n\"line two\"".into());
    t.note = Some("note with \t tab".into());
    let written = applied(store, &t).await;
    let read = f.other.get(&r.id).await.unwrap().unwrap();
    assert_eq!(read, written);
    assert_eq!(read.workflow, req.workflow);
    assert_eq!(read.step, Some(7));
    assert_eq!(read.key(), "ключ/with spaces & \"quotes\" {braces}");
}

pub async fn list_filters_and_pages_by_id(f: &Fixture) {
    let store = &*f.store;
    let op = format!("conf.list.{}", fastrand_key());
    let workflow = id("conf.list-workflow", &op);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut req = request(&op, &format!("k{i}"), "a");
        if i % 2 == 0 {
            req.workflow = Some(workflow.clone());
            req.step = Some(i);
        }
        let r = acquire(store, &req).await;
        // Statuses alternate, so pages of all records cross from one to another.
        if i % 2 == 1 {
            applied(store, &complete(&r, b"1")).await;
        }
        ids.push(r.id);
    }
    let by_op = |q: Query| {
        let op = op.clone();
        async move {
            let q = Query { op: Some(op), ..q };
            store
                .list(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by_op(Query::default()).await, ids);
    assert_eq!(
        by_op(Query::statuses(&[Status::Completed])).await,
        vec![ids[1].clone(), ids[3].clone()]
    );
    assert_eq!(
        by_op(Query::statuses(&[Status::Pending, Status::Failed])).await,
        vec![ids[0].clone(), ids[2].clone(), ids[4].clone()]
    );
    let steps = Query {
        workflow: Some(workflow.clone()),
        ..Query::default()
    };
    assert_eq!(
        by_op(steps).await,
        vec![ids[0].clone(), ids[2].clone(), ids[4].clone()]
    );
    let page1 = by_op(Query {
        limit: 2,
        ..Query::default()
    })
    .await;
    let page2 = by_op(Query {
        limit: 2,
        after: page1.last().cloned(),
        ..Query::default()
    })
    .await;
    let page3 = by_op(Query {
        limit: 2,
        after: page2.last().cloned(),
        ..Query::default()
    })
    .await;
    assert_eq!([page1, page2, page3].concat(), ids);
}

/// Invariant 12: a transition marked `if_lease_expired` applies only while
/// the record's lease has run out on the store's clock as it writes (on
/// both the full and the quiet path); a renewal moves that moment.
pub async fn a_takeover_applies_only_once_the_lease_ran_out(f: &Fixture) {
    let store = &*f.store;
    let held = acquire(store, &request("conf.if-expired", "k", "a")).await;
    let takeover = |r: &Record| {
        let mut t = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Pending);
        t.lease = LeaseChange::Acquire(LEASE);
        t.if_lease_expired = true;
        t
    };
    let mut release = Transition::new(
        held.id.clone(),
        Status::Pending,
        held.token,
        Status::Released,
    );
    release.if_lease_expired = true;
    // Live: refused on both paths, nothing written.
    assert!(matches!(
        store.transition(&takeover(&held)).await.unwrap(),
        Transitioned::Conflict(Some(_))
    ));
    assert!(!store.apply(&release).await.unwrap());
    // Renewed just before the lease ran out: still refused after it.
    f.pass(LEASE / 2).await;
    let renewed = store
        .renew(&held.id, Status::Pending, held.token, LEASE * 2)
        .await
        .unwrap();
    assert!(renewed.is_some());
    f.pass(LEASE).await;
    assert!(!f.other.apply(&release).await.unwrap());
    assert_eq!(
        store.get(&held.id).await.unwrap().unwrap().token,
        held.token
    );
    // Run out: the takeover applies, with a newer token.
    f.pass(LEASE * 2).await;
    let taken = applied(&*f.other, &takeover(&held)).await;
    assert!(taken.token > held.token);
    // Without a lease (cleared), it counts as run out.
    let mut clear = Transition::new(
        taken.id.clone(),
        Status::Pending,
        taken.token,
        Status::Pending,
    );
    clear.lease = LeaseChange::Clear;
    let cleared = applied(store, &clear).await;
    let mut release = Transition::new(
        cleared.id.clone(),
        Status::Pending,
        cleared.token,
        Status::Released,
    );
    release.if_lease_expired = true;
    assert!(store.apply(&release).await.unwrap());
}

/// `retry_after` moves when a record is due without changing it otherwise:
/// an active record keeps its (run-out) lease and is due after the delay; a
/// stopped rollback is due after it; a final record with one stays due (a
/// follow-up) until a transition to its own status without one.
pub async fn retry_after_reschedules_without_changing_the_record(f: &Fixture) {
    let store = &*f.store;
    let held = acquire(store, &request("conf.reschedule", "k", "a")).await;
    f.pass(PAST_LEASE).await;
    let mut later = Transition::new(
        held.id.clone(),
        Status::Pending,
        held.token,
        Status::Pending,
    );
    later.lease = LeaseChange::Keep;
    later.retry_after = Some(Duration::from_secs(3600));
    later.if_lease_expired = true;
    let moved = applied(store, &later).await;
    assert_eq!(
        (moved.token, moved.lease_until),
        (held.token, held.lease_until)
    );
    let due = moved.due_at.unwrap();
    assert!(
        due.as_millis() >= moved.updated_at.as_millis() + 3_600_000,
        "{moved:?}"
    );
    assert!(
        !store
            .due(1000)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == held.id)
    );

    // A final record with a follow-up, then without.
    let mut done = complete(&moved, b"7");
    done.retention = None;
    done.retry_after = Some(Duration::from_millis(1));
    let done = applied(store, &done).await;
    assert!(
        done.due_at.is_some() && done.expires_at.is_none(),
        "{done:?}"
    );
    f.pass(Duration::from_millis(5)).await;
    assert!(
        store
            .due(1000)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == held.id)
    );
    let mut settled = Transition::new(
        done.id.clone(),
        Status::Completed,
        done.token,
        Status::Completed,
    );
    settled.retention = Some(Duration::from_secs(3600));
    let settled = applied(store, &settled).await;
    assert_eq!(settled.due_at, None);
    assert!(settled.expires_at.is_some());
    assert_eq!(settled.output, done.output, "kept");
}
