//! Settling what a holder that died left behind, shared by the reconciler,
//! the rollback and the operator's actions:
//!
//! - a crashed call is released (idempotent), probed or parked
//!   (non-idempotent), or parked as `RecoveryFailed` once it has crashed more
//!   often than the runtime allows (invariant 10);
//! - a step keeps no retention of its own while its workflow is not final,
//!   and its retention starts when the workflow's does (invariant 9);
//! - a record that cannot be settled yet is rescheduled, so it never stands
//!   in the way of the others.
//!
//! Every takeover here asks the store to check, as it writes, that the lease
//! has run out on its own clock (invariant 12): a holder that renewed after
//! the record was read keeps its claim.

use std::time::Duration;

use crate::error::Error;
use crate::invoke::{Held, heartbeat};
use crate::record::{Kind, LeaseChange, Record, Status, Transition};
use crate::runtime::{Runtime, bump};

/// What settling a crashed call came to.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Idempotent: released; the next call with its key runs it.
    Released,
    /// Non-idempotent: its probe said what happened (recorded as completed,
    /// or released when there was no effect).
    Probed,
    /// Parked for an operator (`OutcomeUnknown`, `RecoveryFailed`): the
    /// record as written.
    Parked(Box<Record>),
    /// Another holder got there first, or the lease was renewed meanwhile.
    Lost,
}

/// How long a workflow that became final stays due, so that a reconciler
/// starts its steps' retention if the runtime that finished it dies first.
pub(crate) fn follow_up_after(rt: &Runtime) -> Duration {
    rt.inner.config.lease
}

impl Runtime {
    /// Settles a `Pending` call (not a workflow) whose holder vanished, as
    /// listed in `r`: released when idempotent; settled by its probe, or
    /// parked as `OutcomeUnknown` without one, when not; parked as
    /// `RecoveryFailed` when it has been run more often than
    /// `recovery_attempts` allows (a body that kills its process every time).
    pub(crate) async fn settle_crashed(&self, r: &Record) -> Result<Settled, Error> {
        let crash_loop = r.attempts > self.inner.config.recovery_attempts;
        if r.kind == Kind::Idempotent {
            if crash_loop {
                return self.park_crash_loop(r, false).await;
            }
            let mut t = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Released);
            t.error = Some("its holder vanished; the next call with the key runs it again".into());
            t.if_lease_expired = true;
            return match self.apply_final(t, r).await {
                Ok(_) => Ok(Settled::Released),
                Err(Error::Fenced { .. }) => Ok(Settled::Lost),
                Err(e) => Err(e),
            };
        }
        let probe = self.catalog().get(r.op()).and_then(|e| e.probe);
        let Some(probe) = probe else {
            let mut t = Transition::new(
                r.id.clone(),
                Status::Pending,
                r.token,
                Status::OutcomeUnknown,
            );
            t.error = Some(
                "its holder vanished before the outcome was recorded, and it has no probe".into(),
            );
            t.if_lease_expired = true;
            return self.park(&t).await;
        };
        // Taken over first, so one caller probes.
        let mut claim = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Pending);
        claim.lease = LeaseChange::Acquire(self.inner.config.lease);
        claim.if_lease_expired = true;
        let held = match self.apply(&claim).await {
            Ok(held) => held,
            Err(Error::Fenced { .. }) => return Ok(Settled::Lost),
            Err(e) => return Err(e),
        };
        let lease = Held::from_ref(&held);
        let found = heartbeat(self, &lease, self.scope(probe(held.input.to_vec()))).await;
        let mut t = Transition::new(
            held.id.clone(),
            Status::Pending,
            held.token,
            Status::Completed,
        );
        match found {
            Ok(Some(output)) => t.output = Some(output.into()),
            // Held by this probe's claim: parked by its holder.
            Ok(None) if crash_loop => return self.park_crash_loop(&held, true).await,
            Ok(None) => {
                t.to = Status::Released;
                t.error =
                    Some("the probe found no effect; the next call with the key runs it".into());
            }
            // The record stays claimed: due again when the probe's lease
            // runs out.
            Err(message) => {
                return Err(Error::Compensation {
                    op: r.op().to_owned(),
                    compensation: "probe".into(),
                    message,
                });
            }
        }
        self.apply_final(t, &held).await.map(|_| Settled::Probed)
    }

    /// Parks a `Pending` record (a call or a workflow) that crashed more often
    /// than allowed: taken over from a holder that vanished, or written by
    /// this caller's own claim (`held`).
    pub(crate) async fn park_crash_loop(&self, r: &Record, held: bool) -> Result<Settled, Error> {
        let mut t = Transition::new(
            r.id.clone(),
            Status::Pending,
            r.token,
            Status::RecoveryFailed,
        );
        let mut error = format!(
            "run {} times and its holder died every time (recovery_attempts is {})",
            r.attempts, self.inner.config.recovery_attempts
        );
        if let Some(last) = &r.error {
            error.push_str("; last error: ");
            error.push_str(last);
        }
        t.error = Some(error);
        t.if_lease_expired = !held;
        self.park(&t).await
    }

    async fn park(&self, t: &Transition) -> Result<Settled, Error> {
        match self.apply(t).await {
            Ok(parked) => {
                bump(&self.inner.counters.dead_letters);
                tracing::warn!(id = %parked.id, status = %parked.status, error = ?parked.error, "parked for an operator");
                Ok(Settled::Parked(Box::new(parked)))
            }
            Err(Error::Fenced { .. }) => Ok(Settled::Lost),
            Err(e) => Err(e),
        }
    }

    /// The retention `r` gets if it becomes final now: the runtime's, but
    /// none for a step whose workflow's retention has not started (the
    /// workflow is not final, or it is a step of another that is not):
    /// invariant 9.
    pub(crate) async fn retention_of(&self, r: &Record) -> Result<Option<Duration>, Error> {
        let retention = self.inner.config.retention;
        let Some(workflow) = &r.workflow else {
            return Ok(Some(retention));
        };
        let started = match self.store().get(workflow).await? {
            None => true,
            Some(w) => w.status.is_final() && (w.workflow.is_none() || w.expires_at.is_some()),
        };
        Ok(started.then_some(retention))
    }

    /// Applies `t` (to a final status, for the record `r`) with the retention
    /// `r` may have. A step written without one checks its workflow again
    /// afterwards: if the workflow ended meanwhile, its follow-up may have
    /// looked at the steps before this write, so the step starts its own.
    pub(crate) async fn apply_final(&self, mut t: Transition, r: &Record) -> Result<Record, Error> {
        t.retention = self.retention_of(r).await?;
        let written = self.apply(&t).await?;
        if t.retention.is_none()
            && let Some(retention) = self.retention_of(&written).await?
        {
            return self.keep_final(&written, retention, None).await;
        }
        Ok(written)
    }

    /// Keeps a final record in its status while giving it `retention` (from
    /// now) and `retry_after` (`None`: no longer due).
    async fn keep_final(
        &self,
        r: &Record,
        retention: Duration,
        retry_after: Option<Duration>,
    ) -> Result<Record, Error> {
        let mut t = Transition::new(r.id.clone(), r.status, r.token, r.status);
        t.retention = Some(retention);
        t.retry_after = retry_after;
        self.apply(&t).await
    }

    /// Starts the retention of a workflow that became final, as its
    /// follow-up: first each of its final steps (and theirs, for a nested
    /// workflow), then its own (`retention`, when it is not a step of
    /// another), which also ends the follow-up. Steps that are not final yet
    /// start theirs when they become final (see [`Runtime::apply_final`]).
    pub(crate) async fn start_retention(
        &self,
        wf: &Record,
        retention: Duration,
    ) -> Result<Record, Error> {
        let step_retention = self.inner.config.retention;
        for step in crate::workflow::steps(self, &wf.id).await? {
            if !step.status.is_final() || step.expires_at.is_some() {
                continue;
            }
            let kept = if step.kind == Kind::Workflow {
                Box::pin(self.start_retention(&step, step_retention))
                    .await
                    .map(drop)
            } else {
                self.keep_final(&step, step_retention, None).await.map(drop)
            };
            match kept {
                // It changed meanwhile: whoever changed it decided.
                Ok(()) | Err(Error::Fenced { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.keep_final(wf, retention, None).await
    }

    /// Moves `r`'s next look to `delay` from now without changing it
    /// otherwise: for a record a pass cannot settle yet (invariant 10). An
    /// active record is moved only while its lease has run out; a live
    /// holder's renewals decide when it is due.
    pub(crate) async fn reschedule(&self, r: &Record, delay: Duration) -> Result<(), Error> {
        let mut t = Transition::new(r.id.clone(), r.status, r.token, r.status);
        t.lease = LeaseChange::Keep;
        t.retry_after = Some(delay.max(Duration::from_millis(1)));
        t.if_lease_expired = r.status.is_active();
        if r.status.is_final() {
            // Kept: the same end of retention, from the store's now.
            let now = self.store().now().await?;
            t.retention = r
                .expires_at
                .map(|at| Duration::from_millis(at.as_millis().saturating_sub(now.as_millis())));
        }
        match self.write(&t).await {
            Ok(()) | Err(Error::Fenced { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes the workflow of `step` due at once when its rollback stopped
    /// (`PartiallyRolledBack`): the step left the dead letters, so the
    /// rollback may go on.
    pub(crate) async fn nudge_workflow_of(&self, step: &Record) -> Result<(), Error> {
        let Some(workflow) = &step.workflow else {
            return Ok(());
        };
        match self.store().get(workflow).await? {
            Some(w) if w.status == Status::PartiallyRolledBack => {
                self.reschedule(&w, Duration::from_millis(1)).await
            }
            _ => Ok(()),
        }
    }
}
