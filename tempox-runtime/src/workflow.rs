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

use crate::catalog::{Compensation, Recover};
use crate::error::Error;
use crate::invoke::{Guard, Held, heartbeat};
use crate::key::Fingerprint;
use crate::operation::{Operation, OperationError};
use crate::record::{ClaimRequest, Kind, LeaseChange, Record, RecordId, Status, Transition};
use crate::runtime::Runtime;
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
}

impl Context {
    async fn load(rt: &Runtime, id: &RecordId, rolling_back: bool) -> Result<Self, Error> {
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
        })
    }
}

/// Makes `req` the next step of the running workflow, if the call is made inside
/// one: keyed by (workflow, step number, operation). A step that differs from
/// what an earlier run recorded at that number is `NonDeterministic`.
pub(crate) fn assign_step(req: &mut ClaimRequest) -> Result<(), Error> {
    let Ok(ctx) = WORKFLOW.try_with(Arc::clone) else {
        return Ok(());
    };
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
        let ctx = match Context::load(&rt, &self.held.id, rolling_back).await {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => return Err(Op::Error::from_tempox(e)),
        };
        let result = heartbeat(&rt, &self.held, WORKFLOW.scope(ctx, body)).await;
        let error = match result {
            Ok(output) if !rolling_back => return self.finish(Ok(output)).await,
            Ok(_) => Op::Error::from_tempox(Error::RollbackRequested {
                workflow: self.held.id.to_string(),
            }),
            Err(e) => e,
        };
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
/// too), then records `RolledBack`, or `PartiallyRolledBack` when a
/// compensation is dead-lettered (the rollback stops there unless `strict` is
/// off). Invariant 6.
pub(crate) async fn roll_back(rt: &Runtime, wf: Record, strict: bool) -> Result<Record, Error> {
    let work = async {
        let mut steps = steps(rt, &wf.id).await?;
        // A step whose outcome is unknown (or that never recorded one) may have
        // taken effect and cannot be compensated: the rollback is not complete.
        let mut parked = steps
            .iter()
            .any(|s| matches!(s.status, Status::OutcomeUnknown | Status::Pending));
        // Steps already being compensated (a rollback taken over or resumed) come
        // first; then completed steps, newest completion first.
        steps.retain(|s| {
            matches!(
                s.status,
                Status::Completed | Status::Compensating | Status::CompensationFailed
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
        t.to = Status::PartiallyRolledBack;
    } else {
        t.retention = Some(rt.inner.config.retention);
    }
    rt.apply(&t).await
}

/// Undoes one step, retrying its compensation with backoff until it succeeds or
/// is dead-lettered.
async fn undo(rt: &Runtime, mut step: Record, strict: bool) -> Result<Undone, Error> {
    let compensation = rt.catalog().get(step.op()).map(|e| e.compensation);
    if matches!(compensation, Some(Compensation::None | Compensation::Noop)) {
        return Ok(Undone::Skipped);
    }
    if step.kind == Kind::Workflow {
        let inner = Box::pin(roll_back_completed(rt, &step, strict)).await?;
        return Ok(if inner.status == Status::RolledBack {
            Undone::Done
        } else {
            Undone::Parked
        });
    }
    loop {
        match step.status {
            Status::Compensated => return Ok(Undone::Done),
            Status::CompensationFailed => return Ok(Undone::Parked),
            _ => {}
        }
        match Box::pin(rt.compensate(&step.id)).await {
            Ok(done) if done.status == Status::Compensated => return Ok(Undone::Done),
            Ok(_)
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
        if step.status == Status::Compensating {
            // Failed and scheduled, or another holder is on it: wait, then again.
            tokio::time::sleep(rt.inner.config.retry_backoff.delay(step.attempts.max(1))).await;
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

impl Runtime {
    /// Recovers a workflow whose process died, from its record alone: the entry
    /// point the reconciler calls for each crashed workflow.
    ///
    /// - `Pending` with its lease run out: `recover = resume` runs it again from
    ///   its recorded input (completed steps replay); `recover = rollback` undoes
    ///   its completed steps.
    /// - `RollingBack` with its lease run out: the rollback is taken over.
    /// - `PartiallyRolledBack`: the rollback goes on (after an operator retried
    ///   or resolved the compensation that stopped it).
    ///
    /// Returns the workflow's record afterwards.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::WrongStatus`] if the record is not a workflow
    /// in one of those states (a live lease included); [`Error::Config`] if the
    /// workflow is not linked into this program; store and compensation errors.
    pub async fn recover_workflow(&self, id: &RecordId) -> Result<Record, Error> {
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
                message: format!("no workflow named `{}` is linked into this program", r.op()),
            })?;
        let strict = !entry.continue_past_dead_letters;
        let takeover = |from: Status| {
            let mut t = Transition::new(r.id.clone(), from, r.token, Status::RollingBack);
            t.lease = LeaseChange::Acquire(self.inner.config.lease);
            t
        };
        match r.status {
            // Both run the workflow again: completed steps replay and an
            // interrupted one is settled (run again if idempotent, probed or
            // parked if not). With `rollback`, no step that never ran is started
            // and everything completed is then undone.
            Status::Pending if r.lease_expired(now) => {
                let run = RECOVERY.scope(entry.recover, (entry.resume)(r.input.to_vec()));
                if let Err(message) = self.scope(run).await {
                    tracing::info!(%id, error = %message, "recovered workflow ended with an error");
                }
                self.store()
                    .get(id)
                    .await?
                    .ok_or_else(|| Error::NotFound { id: id.to_string() })
            }
            Status::RollingBack if r.lease_expired(now) => {
                let held = self.apply(&takeover(Status::RollingBack)).await?;
                roll_back(self, held, strict).await
            }
            Status::PartiallyRolledBack => {
                let held = self.apply(&takeover(Status::PartiallyRolledBack)).await?;
                roll_back(self, held, strict).await
            }
            _ => Err(wrong(&r)),
        }
    }

    /// The step records of workflow `id`, in id order.
    ///
    /// # Errors
    /// [`Error::Store`] when the store fails.
    pub async fn steps(&self, id: &RecordId) -> Result<Vec<Record>, Error> {
        steps(self, id).await
    }
}
