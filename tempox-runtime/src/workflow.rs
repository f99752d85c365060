//! Workflows: a sequence of annotated calls (steps), checkpointed one by one,
//! rolled back newest first when the workflow fails, and recovered in any
//! process when the one running it dies.
//!
//! While a workflow's body runs, a task-local context tells every annotated
//! call that it is step `n` of that workflow: its record is keyed by the
//! workflow, the step number and the operation, so running the workflow again
//! replays the steps it already completed. Steps are found at run time; the
//! body is never rewritten.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Duration;

use crate::catalog::{Compensation, Recover};
use crate::error::Error;
use crate::invoke::{Guard, Held, heartbeat, heartbeat_watched};
use crate::key::Fingerprint;
use crate::operation::{Operation, OperationError};
use crate::record::{
    ClaimRequest, Kind, LeaseChange, Record, RecordId, Status, Timestamp, Transition,
};
use crate::recovery::Settled;
use crate::runtime::{Backoff, Runtime};
use crate::store::Query;

tokio::task_local! {
    static WORKFLOW: Arc<Context>;
    /// Set by recovery around a workflow it runs again.
    static RECOVERY: Recover;
}

/// A `#[workflow]`: an operation whose body's calls are its steps.
pub trait Workflow: Operation {
    /// What recovery does after a crash (`recover = resume | rollback`).
    const RECOVER: Recover;
    /// Whether a dead-lettered compensation stops the rollback (the default) or
    /// the rollback goes on past it (`rollback = continue`).
    const STRICT: bool;
    /// `deadline = "15m"`: how long after it started the workflow may run
    /// before it is rolled back.
    const DEADLINE: Option<Duration> = None;
}

/// The running workflow, as its steps see it.
pub(crate) struct Context {
    id: RecordId,
    /// Recovery with `recover = rollback`: completed and in-doubt steps are
    /// replayed or settled, steps that never ran are not started.
    rolling_back: bool,
    next_step: AtomicU32,
    /// Steps recorded by earlier runs: step number → (operation, fingerprint).
    recorded: HashMap<u32, (String, Fingerprint)>,
    /// Why a step could neither run nor replay for a reason of time or of the
    /// store rather than of its body (a holder still running it, an outcome
    /// that could not be written): the workflow is then not rolled back, and
    /// is run again later.
    in_doubt: std::sync::Mutex<Option<String>>,
    /// Steps this run holds a claim on (id, token): when the deadline stops
    /// the run, their leases end at once instead of running out.
    claimed: std::sync::Mutex<Vec<(RecordId, u64)>>,
    /// Until when this run surely holds the workflow's lease: past it,
    /// another may have taken the workflow over, so no new step starts.
    lease: crate::invoke::LeaseWatch,
}

impl Context {
    async fn load(
        rt: &Runtime,
        id: &RecordId,
        rolling_back: bool,
        lease: crate::invoke::LeaseWatch,
    ) -> Result<Self, Error> {
        let recorded = steps(rt, id)
            .await?
            .into_iter()
            .filter_map(|r| Some((r.step?, (r.op().to_owned(), r.fingerprint))))
            .collect();
        Ok(Context {
            id: id.clone(),
            rolling_back,
            next_step: AtomicU32::new(1),
            recorded,
            in_doubt: std::sync::Mutex::new(None),
            claimed: std::sync::Mutex::new(Vec::new()),
            lease,
        })
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, Vec<(RecordId, u64)>> {
        self.claimed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_in_doubt(&self, why: String) {
        let mut in_doubt = self
            .in_doubt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        in_doubt.get_or_insert(why);
    }

    fn in_doubt(&self) -> Option<String> {
        self.in_doubt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Notes that the running workflow holds a claim on step `id` with `token`
/// (`held: false`: no longer, its outcome was written or given up).
pub(crate) fn note_claim(id: &RecordId, token: u64, held: bool) {
    let _ = WORKFLOW.try_with(|ctx| {
        let mut claimed = ctx.claimed();
        claimed.retain(|(i, _)| i != id);
        if held {
            claimed.push((id.clone(), token));
        }
    });
}

/// Notes, in the running workflow, a step's failure that says nothing about
/// the step's body: another holder still runs it (`InFlight`), its outcome
/// could not be written or was fenced, or the store failed. Rolling the
/// workflow back then would act on a step whose outcome is not known yet
/// (invariant 12), so the workflow is left to be run again instead.
pub(crate) fn note_in_doubt(e: &Error) {
    let in_doubt = matches!(
        e,
        Error::InFlight { .. }
            | Error::OutcomeNotRecorded { .. }
            | Error::Fenced { .. }
            | Error::Store { .. }
    );
    if in_doubt {
        let _ = WORKFLOW.try_with(|ctx| ctx.mark_in_doubt(e.to_string()));
    }
}

/// Makes `req` the next step of the running workflow, if the call is made inside
/// one: keyed by (workflow, step number, operation). A step that differs from
/// what an earlier run recorded at that number is `NonDeterministic`.
pub(crate) fn assign_step(req: &mut ClaimRequest) -> Result<(), Error> {
    let Ok(ctx) = WORKFLOW.try_with(Arc::clone) else {
        return Ok(());
    };
    if !ctx.lease.held() {
        // Its process stalled or could not renew past the lease: another
        // may run the workflow now, and a step started here would run
        // beside it (a step's record is not fenced by its workflow's).
        return Err(Error::Fenced {
            op: ctx.id.op().to_owned(),
            key: ctx.id.key().to_owned(),
            token: 0,
        });
    }
    let step = ctx.next_step.fetch_add(1, Ordering::SeqCst);
    let op = req.id.op().to_owned();
    let Some((recorded, fingerprint)) = ctx.recorded.get(&step) else {
        if ctx.rolling_back {
            return Err(Error::RollbackRequested {
                workflow: ctx.id.to_string(),
            });
        }
        req.id = RecordId::from_parts(&op, &format!("{}#{step}", ctx.id));
        req.workflow = Some(ctx.id.clone());
        req.step = Some(step);
        return Ok(());
    };
    {
        let differs = if *recorded != op {
            Some(op.clone())
        } else if *fingerprint != req.fingerprint {
            Some(format!("{op}` with other arguments than recorded`"))
        } else {
            None
        };
        if let Some(called) = differs {
            return Err(Error::NonDeterministic {
                workflow: ctx.id.to_string(),
                step,
                recorded: recorded.clone(),
                called,
            });
        }
    }
    req.id = RecordId::from_parts(&op, &format!("{}#{step}", ctx.id));
    req.workflow = Some(ctx.id.clone());
    req.step = Some(step);
    Ok(())
}

/// Whether the call runs inside a recovery (which does not wait for a holder
/// that is alive: another recovery got there first).
pub(crate) fn recovering() -> bool {
    RECOVERY.try_with(|_| ()).is_ok()
}

/// Whether the call runs inside a workflow that recovery is rolling back.
pub(crate) fn rolling_back() -> Option<String> {
    WORKFLOW
        .try_with(|ctx| ctx.rolling_back.then(|| ctx.id.to_string()))
        .ok()
        .flatten()
}

/// Every step record of workflow `id`, in id order.
pub(crate) async fn steps(rt: &Runtime, id: &RecordId) -> Result<Vec<Record>, Error> {
    rt.list_all(Query {
        workflow: Some(id.clone()),
        ..Query::default()
    })
    .await
}

impl<Op: Workflow> Guard<Op> {
    /// Runs a workflow's body with its steps checkpointed, records its output, or
    /// rolls its completed steps back and hands back the body's error.
    ///
    /// The rollback runs in a task of its own: dropping the caller's future does
    /// not stop it.
    pub async fn run_workflow<F>(self, body: F) -> Result<Op::Output, Op::Error>
    where
        F: Future<Output = Result<Op::Output, Op::Error>>,
    {
        let rt = self.rt.clone();
        let rolling_back = RECOVERY
            .try_with(|r| *r == Recover::Rollback)
            .unwrap_or(false);
        let lease = self.held.lease_length(&rt);
        // Counted from before the workflow's record is read: no later than
        // the lease taken with the claim.
        let watch = crate::invoke::LeaseWatch::new(lease);
        let ctx = match Context::load(&rt, &self.held.id, rolling_back, watch).await {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => return Err(Op::Error::from_tempox(e)),
        };
        let body = WORKFLOW.scope(ctx.clone(), body);
        let watched = heartbeat_watched(&rt, &self.held, body, Some(&ctx.lease));
        let result = match Op::DEADLINE {
            None => watched.await,
            Some(deadline) => {
                // Counted from the workflow's start on the store's clock, so
                // a run resumed elsewhere keeps the first run's deadline.
                let now = match rt.store().now().await {
                    Ok(now) => now,
                    Err(e) => return Err(Op::Error::from_tempox(e.into())),
                };
                let ends = self.held.created_at.plus(deadline);
                let left = Duration::from_millis(ends.as_millis().saturating_sub(now.as_millis()));
                match tokio::time::timeout(left, watched).await {
                    Ok(result) => result,
                    Err(_) => {
                        // The steps it was in are stopped here, not crashed:
                        // their leases end now, so the rollback settles them
                        // (run again, probed or parked) at once.
                        let stopped = std::mem::take(&mut *ctx.claimed());
                        for (id, token) in stopped {
                            let mut t =
                                Transition::new(id, Status::Pending, token, Status::Pending);
                            t.lease = LeaseChange::Clear;
                            t.error = Some("stopped: its workflow passed its deadline".into());
                            if let Err(e) = rt.write(&t).await {
                                tracing::debug!(error = %e, "could not end a stopped step's lease");
                            }
                        }
                        Err(Op::Error::from_tempox(Error::DeadlineExceeded {
                            workflow: self.held.id.to_string(),
                            deadline,
                        }))
                    }
                }
            }
        };
        let error = match result {
            Ok(output) if !rolling_back => return self.finish(Ok(output)).await,
            Ok(_) => Op::Error::from_tempox(Error::RollbackRequested {
                workflow: self.held.id.to_string(),
            }),
            Err(e) => e,
        };
        if let Some(why) = ctx.in_doubt() {
            self.defer(&why).await;
            return Err(error);
        }
        let wf = &self.held;
        let mut start = Transition::new(
            wf.id.clone(),
            Status::Pending,
            wf.token,
            Status::RollingBack,
        );
        start.lease = LeaseChange::Acquire(rt.inner.config.lease);
        start.error = Some(error.to_string());
        match rt.apply(&start).await {
            Ok(held) => {
                let task_rt = rt.clone();
                let rollback =
                    tokio::spawn(async move { roll_back(&task_rt, held, Op::STRICT).await });
                match rollback.await {
                    Ok(Ok(done)) => {
                        tracing::info!(id = %done.id, status = %done.status, "workflow rolled back")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(id = %wf.id, error = %e, "rollback interrupted; recovery will finish it")
                    }
                    Err(e) => {
                        tracing::warn!(id = %wf.id, error = %e, "rollback task failed; recovery will finish it")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(id = %wf.id, error = %e, "could not start the rollback; recovery will")
            }
        }
        Err(error)
    }
}

impl<Op: Workflow> Guard<Op> {
    /// Leaves the workflow to be run again later instead of rolling it back:
    /// a step's outcome is in doubt (`why`). Its lease ends now and it is due
    /// after a backoff; the reconciler resumes it once the step is settled.
    async fn defer(&self, why: &str) {
        let wf = &self.held;
        tracing::info!(id = %wf.id, reason = why, "a step is in doubt; the workflow is run again later, not rolled back");
        let mut t = Transition::new(wf.id.clone(), Status::Pending, wf.token, Status::Pending);
        t.lease = LeaseChange::Clear;
        t.error = Some(format!("run again later: {why}"));
        t.retry_after = Some(self.rt.inner.config.retry_backoff.delay(2));
        if let Err(e) = self.rt.write(&t).await {
            tracing::warn!(id = %wf.id, error = %e, "could not end the lease; it runs out on its own");
        }
        // A workflow that is a step of another is in doubt for it too.
        note_in_doubt(&Error::InFlight {
            op: wf.id.op().to_owned(),
            key: wf.id.key().to_owned(),
        });
    }
}

/// What [`Runtime::recover`] did.
#[derive(Debug)]
pub(crate) enum Recovered {
    /// Run again to its end.
    Resumed,
    /// Rolled back (to its end, or to where a step stopped it).
    RolledBack,
    /// Parked as `RecoveryFailed`: the record as written.
    Parked(Box<Record>),
    /// Left for later: a step is still held, or the rollback is still stopped.
    Rescheduled,
    /// Anything else (its follow-up done, or another holder got there first).
    Other,
}

/// What undoing one step came to.
enum Undone {
    /// Compensated (or rolled back, for a nested workflow).
    Done,
    /// Nothing to undo: no compensation, or `noop`.
    Skipped,
    /// Its compensation is parked for an operator.
    Parked,
}

/// Rolls back the completed steps of a workflow held in `RollingBack`: newest
/// completion first, each through the catalog (the path the reconciler uses
/// too), then records `RolledBack`, or `PartiallyRolledBack` when a step
/// stands in the way: a compensation dead-lettered, an outcome unknown, or a
/// step still held by another (the rollback stops there unless `strict` is
/// off, and goes on by itself once that changes). Steps whose holder died are
/// settled first. Invariant 6.
pub(crate) async fn roll_back(rt: &Runtime, wf: Record, strict: bool) -> Result<Record, Error> {
    let work = async {
        let mut steps = steps(rt, &wf.id).await?;
        let now = rt.store().now().await?;
        let mut settled_any = false;
        for step in &steps {
            if step.status == Status::Pending
                && step.kind != Kind::Workflow
                && step.lease_expired(now)
            {
                rt.settle_crashed(step).await?;
                settled_any = true;
            }
        }
        if settled_any {
            steps = self::steps(rt, &wf.id).await?;
        }
        // A step whose outcome is unknown, or that is still held, may have
        // taken effect and cannot be compensated yet: the rollback is not
        // complete.
        let mut parked = steps.iter().any(blocks);
        // Steps already being compensated (a rollback taken over or resumed) come
        // first; then completed steps, newest completion first.
        steps.retain(|s| {
            matches!(
                s.status,
                Status::Completed
                    | Status::Compensating
                    | Status::CompensationFailed
                    | Status::RollingBack
                    | Status::PartiallyRolledBack
            )
        });
        steps.sort_by(|a, b| {
            let rank = |s: &Record| u8::from(s.status == Status::Completed);
            rank(a)
                .cmp(&rank(b))
                .then(b.updated_at.cmp(&a.updated_at))
                .then(b.step.cmp(&a.step))
        });
        // Strict: nothing older is undone past a step that may stand.
        if parked && strict {
            steps.clear();
        }
        for step in steps {
            match undo(rt, step, strict).await? {
                Undone::Done | Undone::Skipped => {}
                Undone::Parked => {
                    parked = true;
                    if strict {
                        break;
                    }
                }
            }
        }
        Ok::<_, Error>(parked)
    };
    let parked = heartbeat(rt, &Held::from_ref(&wf), work).await?;
    let mut t = Transition::new(
        wf.id.clone(),
        Status::RollingBack,
        wf.token,
        Status::RolledBack,
    );
    if parked {
        // Looked at again later: the rollback goes on once nothing blocks it.
        t.to = Status::PartiallyRolledBack;
        t.retry_after = Some(rt.inner.config.retry_backoff.cap);
        return rt.apply(&t).await;
    }
    if wf.workflow.is_some() {
        // A step of another: its retention starts with its parent's.
        return rt.apply(&t).await;
    }
    t.retry_after = Some(crate::recovery::follow_up_after(rt));
    let done = rt.apply(&t).await?;
    let retention = rt.inner.config.retention;
    match rt.start_retention(&done, retention).await {
        Ok(done) => Ok(done),
        Err(e) => {
            tracing::warn!(id = %done.id, error = %e, "could not start the retention of the steps; the reconciler will");
            Ok(done)
        }
    }
}

/// Whether a step keeps its workflow's rollback from completing: its outcome
/// is unknown, it is parked, or it is still held (running, being compensated
/// by another, or a nested rollback in progress or stopped).
fn blocks(step: &Record) -> bool {
    step.status.is_dead_letter()
        || matches!(step.status, Status::Pending | Status::PartiallyRolledBack)
}

/// Undoes one step, retrying its compensation with backoff until it succeeds or
/// is dead-lettered. Every status is handled, and each wait grows.
async fn undo(rt: &Runtime, mut step: Record, strict: bool) -> Result<Undone, Error> {
    let compensation = rt.catalog().get(step.op()).map(|e| e.compensation);
    if matches!(compensation, Some(Compensation::None | Compensation::Noop)) {
        return Ok(Undone::Skipped);
    }
    let pause = Backoff {
        jitter: false,
        ..rt.inner.config.retry_backoff
    };
    let mut waits = 0u32;
    loop {
        match step.status {
            Status::Compensated | Status::Resolved | Status::RolledBack => return Ok(Undone::Done),
            // Nothing took effect.
            Status::Released | Status::Failed => return Ok(Undone::Skipped),
            Status::CompensationFailed
            | Status::OutcomeUnknown
            | Status::RecoveryFailed
            | Status::Pending
            | Status::PartiallyRolledBack => return Ok(Undone::Parked),
            Status::Completed if step.kind == Kind::Workflow => {
                let inner = Box::pin(roll_back_completed(rt, &step, strict)).await?;
                return Ok(if inner.status == Status::RolledBack {
                    Undone::Done
                } else {
                    Undone::Parked
                });
            }
            Status::Completed | Status::Compensating | Status::RollingBack => {}
        }
        let attempt = if step.kind == Kind::Workflow {
            // A nested rollback another runtime holds: its lease decides.
            match Box::pin(rt.recover_workflow(&step.id)).await {
                Ok(inner) if inner.status == Status::RolledBack => return Ok(Undone::Done),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            match Box::pin(rt.compensate(&step.id)).await {
                Ok(done) if done.status == Status::Compensated => return Ok(Undone::Done),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match attempt {
            Ok(())
            | Err(Error::Compensation { .. } | Error::Fenced { .. } | Error::WrongStatus { .. }) => {
            }
            Err(e) => return Err(e),
        }
        step = rt
            .store()
            .get(&step.id)
            .await?
            .ok_or_else(|| Error::NotFound {
                id: step.id.to_string(),
            })?;
        if matches!(step.status, Status::Compensating | Status::RollingBack) {
            // Failed and scheduled, or another holder is on it: wait, longer
            // each time, then again.
            waits = waits.saturating_add(1);
            tokio::time::sleep(pause.delay(waits).max(Duration::from_millis(1))).await;
        }
    }
}

/// Rolls back a completed workflow that was a step of another.
pub(crate) async fn roll_back_completed(
    rt: &Runtime,
    wf: &Record,
    strict: bool,
) -> Result<Record, Error> {
    let mut t = Transition::new(wf.id.clone(), wf.status, wf.token, Status::RollingBack);
    t.lease = LeaseChange::Acquire(rt.inner.config.lease);
    let held = rt.apply(&t).await?;
    roll_back(rt, held, strict).await
}

/// The longest a stopped rollback waits for its next look.
const PARKED_CAP: Duration = Duration::from_secs(300);

/// When a workflow whose rollback stopped may go on: `None` when no step
/// blocks it, else how long to wait (the end of a blocking step's lease, or
/// a backoff for a parked one).
async fn blocked(rt: &Runtime, wf: &Record, now: Timestamp) -> Result<Option<Duration>, Error> {
    // Parked for an operator: looked at again less and less often (twice as
    // long as it has waited, within the backoff's cap and five minutes); an
    // operator's retry or resolve makes it due at once anyway.
    let waited = Duration::from_millis(now.as_millis().saturating_sub(wf.updated_at.as_millis()));
    let cap = rt.inner.config.retry_backoff.cap;
    let parked = waited
        .saturating_mul(2)
        .clamp(cap.min(PARKED_CAP), PARKED_CAP);
    let mut wait: Option<Duration> = None;
    for step in steps(rt, &wf.id).await? {
        let step_wait =
            if step.status.is_dead_letter() || step.status == Status::PartiallyRolledBack {
                parked
            } else if step.status.is_active() && !step.lease_expired(now) {
                let until = step.lease_until.map_or(0, |u| u.as_millis());
                Duration::from_millis(until.saturating_sub(now.as_millis()))
            } else {
                continue;
            };
        wait = Some(wait.map_or(step_wait, |w| w.min(step_wait)));
    }
    Ok(wait)
}

/// The earliest end of a lease that a step of `wf` still holds at `now`.
async fn live_step(rt: &Runtime, wf: &Record, now: Timestamp) -> Result<Option<Duration>, Error> {
    let mut wait: Option<Duration> = None;
    for step in steps(rt, &wf.id).await? {
        if step.status.is_active()
            && !step.lease_expired(now)
            && let Some(until) = step.lease_until
        {
            let d = Duration::from_millis(until.as_millis().saturating_sub(now.as_millis()));
            wait = Some(wait.map_or(d, |w| w.min(d)));
        }
    }
    Ok(wait)
}

impl Runtime {
    /// Recovers a workflow whose process died, from its record alone: the entry
    /// point the reconciler calls for each crashed workflow, and the one
    /// behind `tempox recover`.
    ///
    /// - `Pending` with its lease run out: `recover = resume` runs it again from
    ///   its recorded input (completed steps replay) once no step of it is held
    ///   any more; `recover = rollback` undoes its completed steps. After more
    ///   runs than `recovery_attempts` allows it is parked as `RecoveryFailed`.
    /// - `RollingBack` with its lease run out: the rollback is taken over.
    /// - `PartiallyRolledBack`: the rollback goes on once no step blocks it
    ///   (an operator retried or resolved the compensation that stopped it);
    ///   until then it is rescheduled.
    /// - Final and still due: its steps' retention is started.
    ///
    /// Returns the workflow's record afterwards (still `Pending` or
    /// `PartiallyRolledBack` when it had to wait, with the time it is due).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::WrongStatus`] if the record is not a workflow
    /// in one of those states (a live lease included); [`Error::Config`] if the
    /// workflow is not linked into this program; store and compensation errors.
    pub async fn recover_workflow(&self, id: &RecordId) -> Result<Record, Error> {
        self.recover(id).await.map(|(_, record)| record)
    }

    /// [`recover_workflow`](Self::recover_workflow), saying what it did.
    pub(crate) async fn recover(&self, id: &RecordId) -> Result<(Recovered, Record), Error> {
        let r = self
            .store()
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        let now = self.store().now().await?;
        let wrong = |r: &Record| Error::WrongStatus {
            action: "recover",
            id: id.to_string(),
            status: r.status,
        };
        if r.kind != Kind::Workflow {
            return Err(wrong(&r));
        }
        let entry = self
            .catalog()
            .workflow(r.op())
            .ok_or_else(|| Error::Config {
                setting: "workflow",
                message: format!(
                    "no workflow named `{}` is linked into this program; recover it from a process that links it",
                    r.op()
                ),
            })?;
        let strict = !entry.continue_past_dead_letters;
        let takeover = |from: Status| {
            let mut t = Transition::new(r.id.clone(), from, r.token, Status::RollingBack);
            t.lease = LeaseChange::Acquire(self.inner.config.lease);
            t.if_lease_expired = true;
            t
        };
        let reread = || async {
            self.store()
                .get(id)
                .await?
                .ok_or_else(|| Error::NotFound { id: id.to_string() })
        };
        match r.status {
            Status::Pending
                if r.lease_expired(now)
                    && entry.deadline.is_some_and(|d| r.created_at.plus(d) <= now) =>
            {
                // Past its deadline: rolled back, not run again.
                let mut t = takeover(Status::Pending);
                t.error = entry.deadline.map(|deadline| {
                    Error::DeadlineExceeded {
                        workflow: id.to_string(),
                        deadline,
                    }
                    .to_string()
                });
                let held = self.apply(&t).await?;
                let done = roll_back(self, held, strict).await?;
                Ok((Recovered::RolledBack, done))
            }
            Status::Pending if r.lease_expired(now) => {
                if r.attempts > self.inner.config.recovery_attempts {
                    return Ok(match self.park_crash_loop(&r, false).await? {
                        Settled::Parked(parked) => (Recovered::Parked(parked.clone()), *parked),
                        _ => (Recovered::Other, reread().await?),
                    });
                }
                // A step still held by another: never rolled back because
                // of its lease (invariant 12); run again once it ends.
                if let Some(wait) = live_step(self, &r, now).await? {
                    self.reschedule(&r, wait).await?;
                    return Ok((Recovered::Rescheduled, reread().await?));
                }
                // Both run the workflow again: completed steps replay and an
                // interrupted one is settled (run again if idempotent, probed or
                // parked if not). With `rollback`, no step that never ran is started
                // and everything completed is then undone.
                let run = RECOVERY.scope(entry.recover, (entry.resume)(r.input.to_vec()));
                if let Err(message) = self.scope(run).await {
                    tracing::info!(%id, error = %message, "recovered workflow ended with an error");
                }
                let after = reread().await?;
                let recovered = match after.status {
                    Status::Completed => Recovered::Resumed,
                    Status::RolledBack | Status::PartiallyRolledBack | Status::RollingBack => {
                        Recovered::RolledBack
                    }
                    Status::Pending if after.token != r.token && after.lease_expired(now) => {
                        Recovered::Rescheduled
                    }
                    _ => Recovered::Other,
                };
                Ok((recovered, after))
            }
            Status::RollingBack if r.lease_expired(now) => {
                let held = self.apply(&takeover(Status::RollingBack)).await?;
                let done = roll_back(self, held, strict).await?;
                Ok((Recovered::RolledBack, done))
            }
            Status::PartiallyRolledBack => {
                if let Some(wait) = blocked(self, &r, now).await? {
                    self.reschedule(&r, wait).await?;
                    return Ok((Recovered::Rescheduled, reread().await?));
                }
                let held = self.apply(&takeover(Status::PartiallyRolledBack)).await?;
                let done = roll_back(self, held, strict).await?;
                Ok((Recovered::RolledBack, done))
            }
            s if s.is_final() && r.due_at.is_some() => {
                let done = if r.workflow.is_some() {
                    // A step of another: its parent starts its retention.
                    self.keep_status(&r).await?
                } else {
                    self.start_retention(&r, self.inner.config.retention)
                        .await?
                };
                Ok((Recovered::Other, done))
            }
            _ => Err(wrong(&r)),
        }
    }

    /// Ends the follow-up of a final record, keeping its status.
    async fn keep_status(&self, r: &Record) -> Result<Record, Error> {
        let t = Transition::new(r.id.clone(), r.status, r.token, r.status);
        self.apply(&t).await
    }

    /// The step records of workflow `id`, in id order.
    ///
    /// # Errors
    /// [`Error::Store`] when the store fails.
    pub async fn steps(&self, id: &RecordId) -> Result<Vec<Record>, Error> {
        steps(self, id).await
    }
}
