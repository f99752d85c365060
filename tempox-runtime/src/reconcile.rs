//! The reconciliation engine: drives every record to a final state — done,
//! compensated, or parked for an operator with nothing lost.
//!
//! A pass takes what the store says is due (expired leases, scheduled
//! retries, new dead letters), handles each by compare-and-set, removes records
//! past their retention, and runs the state mirrors that are due. Every step
//! claims its record first, so any number of reconcilers, in any number of
//! processes, can share a store: each record is handled by one of them.
//!
//! A takeover applies only while the lease has run out on the store's clock
//! as it writes (invariant 12): the pass's own reading of the clock and its
//! listing only pick the candidates. A record the pass cannot settle yet (a
//! workflow waiting for a step another holder runs, a step waiting for its
//! workflow, a rollback still stopped, a failure) is rescheduled with a
//! backoff of its own, and records of operations this process does not link
//! are left to the processes that do (invariants 10 and 11).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::mirror::{MirrorReport, MirrorStats};
use crate::record::{Kind, LeaseChange, Record, RecordId, Status, Timestamp, Transition};
use crate::recovery::Settled;
use crate::runtime::{Backoff, MAX_DURATION, Runtime};
use crate::workflow::Recovered;

/// Called once for each record that enters a dead-letter status.
pub type AlertHook = Arc<dyn Fn(&Record) + Send + Sync>;

/// Runs reconciliation passes over a runtime's store; see
/// [`Runtime::reconciler`].
///
/// ```
/// # extern crate tempox_runtime as tempox;
/// use std::time::Duration;
/// use tempox::{Runtime, store::MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tempox::Error> {
/// let rt = Runtime::builder().store(MemoryStore::new()).build()?;
/// let report = rt
///     .reconciler()
///     .batch(500)
///     .max_attempts(8)
///     .alert(|parked| eprintln!("needs an operator: {}", parked.id))
///     .run_once()
///     .await?;
/// assert_eq!(report.handled(), 0);
///
/// let handle = rt.reconciler().interval(Duration::from_secs(5)).spawn();
/// handle.stop().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Reconciler {
    rt: Runtime,
    interval: Duration,
    batch: usize,
    concurrency: usize,
    max_attempts: u32,
    backoff: Backoff,
    alert: Option<AlertHook>,
    /// Operation names of foreign records already warned about.
    warned: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("interval", &self.interval)
            .field("batch", &self.batch)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("alert", &self.alert.is_some())
            .finish()
    }
}

/// What one pass did: for each action, the records it was applied to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PassReport {
    /// Crashed workflows run again from their record (`recover = resume`).
    pub resumed: Vec<RecordId>,
    /// Workflows rolled back (crashed with `recover = rollback`, or whose
    /// rollback was interrupted or stopped).
    pub rolled_back: Vec<RecordId>,
    /// Idempotent calls whose holder vanished: released, so the next call with
    /// the key runs them.
    pub released: Vec<RecordId>,
    /// Non-idempotent calls whose holder vanished, settled by their probe.
    pub probed: Vec<RecordId>,
    /// Compensations that succeeded.
    pub compensated: Vec<RecordId>,
    /// Compensations that failed and were scheduled again with backoff.
    pub retried: Vec<RecordId>,
    /// Records this pass moved to a dead-letter status.
    pub parked: Vec<RecordId>,
    /// Dead letters whose alert this reconciler raised.
    pub alerted: Vec<RecordId>,
    /// Records past retention that were removed.
    pub expired: usize,
    /// Due records another reconciler (or a live holder) handled first.
    pub skipped: usize,
    /// Records that could not be settled yet, looked at again later with a
    /// backoff of their own (a workflow waiting for a step another holder
    /// still runs, a step waiting for its workflow, a rollback still
    /// stopped), so they never stand in the way of the others.
    pub rescheduled: Vec<RecordId>,
    /// Due records of operations this process does not link: another
    /// service's, left to its own reconcilers and rescheduled (invariant 11).
    pub foreign: usize,
    /// Records whose handling failed (store errors, probes that failed); due
    /// again later.
    pub errors: Vec<(RecordId, String)>,
    /// The state mirrors compared in this pass.
    pub mirrors: Vec<MirrorReport>,
}

impl PassReport {
    /// How many records the pass acted on (excluding expiry and mirrors).
    pub fn handled(&self) -> usize {
        self.resumed.len()
            + self.rolled_back.len()
            + self.released.len()
            + self.probed.len()
            + self.compensated.len()
            + self.retried.len()
            + self.parked.len()
            + self.alerted.len()
    }
}

/// What handling one due record came to.
enum Outcome {
    Resumed,
    RolledBack,
    Released,
    Probed,
    Compensated,
    Retried,
    Parked(Box<Record>),
    Alerted,
    Skipped,
    Rescheduled,
    Foreign,
}

/// The longest a record that cannot be settled yet waits for its next look.
const RESCHEDULE_CAP: Duration = Duration::from_secs(300);

impl Runtime {
    /// A reconciler for this runtime's store, with the runtime's lease, backoff
    /// and compensation attempts as its defaults.
    pub fn reconciler(&self) -> Reconciler {
        Reconciler {
            rt: self.clone(),
            interval: Duration::from_secs(5),
            batch: 256,
            concurrency: 32,
            max_attempts: self.inner.config.compensation_attempts,
            backoff: self.inner.config.retry_backoff,
            alert: None,
            warned: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Totals of every registered state mirror.
    pub fn mirrors(&self) -> Vec<MirrorStats> {
        self.inner.mirrors.iter().map(|m| m.stats()).collect()
    }
}

impl Reconciler {
    /// Time between passes of [`spawn`](Self::spawn) (default 5 s, with up to
    /// 10 % jitter so several reconcilers do not run in step).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Most due records handled per pass (default 256).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How many due records a pass handles at once (default 32): their writes
    /// then share the store's round trips and commits.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Runs of a failing compensation before it is parked as
    /// `CompensationFailed` (default: the runtime's `compensation_attempts`).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Exponential backoff between runs of a failing compensation, per record
    /// (each at most a century).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff.base = base.min(MAX_DURATION);
        self.backoff.cap = cap.max(base).min(MAX_DURATION);
        self
    }

    /// Whether backoff delays are drawn at random below their ceiling (default
    /// true).
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.backoff.jitter = jitter;
        self
    }

    /// Called for each record that enters a dead-letter status, by the one
    /// reconciler that claims its alert (a compare-and-set with a new token).
    /// Once while that reconciler stays up; if it dies inside the hook, before
    /// acknowledging, another calls the hook again after the lease: an alert
    /// may be raised twice, never lost.
    pub fn alert(mut self, hook: impl Fn(&Record) + Send + Sync + 'static) -> Self {
        self.alert = Some(Arc::new(hook));
        self
    }

    /// Runs one pass.
    ///
    /// # Errors
    /// [`Error::Store`] when the due records cannot be read; failures of single
    /// records are in [`PassReport::errors`].
    pub async fn run_once(&self) -> Result<PassReport, Error> {
        let rt = &self.rt;
        let mut report = PassReport::default();
        let mut due = rt.store().due(self.batch).await?.into_iter();
        // One reading of the store's clock per pass (after the due listing, so
        // all it listed is due by it), not one round trip per record.
        let now = rt.store().now().await?;
        let mut outcomes = Vec::new();
        loop {
            let mut wave = tokio::task::JoinSet::new();
            for record in due.by_ref().take(self.concurrency) {
                let this = self.clone();
                wave.spawn(async move {
                    let id = record.id.clone();
                    (id, this.handle(record, now).await)
                });
            }
            if wave.is_empty() {
                break;
            }
            while let Some(done) = wave.join_next().await {
                match done {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => tracing::warn!(error = %e, "a reconciliation task failed"),
                }
            }
        }
        for (id, outcome) in outcomes {
            match outcome {
                Ok(Outcome::Resumed) => report.resumed.push(id),
                Ok(Outcome::RolledBack) => report.rolled_back.push(id),
                Ok(Outcome::Released) => report.released.push(id),
                Ok(Outcome::Probed) => report.probed.push(id),
                Ok(Outcome::Compensated) => report.compensated.push(id),
                Ok(Outcome::Retried) => report.retried.push(id),
                Ok(Outcome::Parked(parked)) => {
                    report.parked.push(id.clone());
                    // Raise its alert now rather than on the next pass.
                    if let Ok(Outcome::Alerted) = self.acknowledge(*parked).await {
                        report.alerted.push(id);
                    }
                }
                Ok(Outcome::Alerted) => report.alerted.push(id),
                Ok(Outcome::Skipped) => report.skipped += 1,
                Ok(Outcome::Rescheduled) => report.rescheduled.push(id),
                Ok(Outcome::Foreign) => report.foreign += 1,
                Err(e) => report.errors.push((id, e.to_string())),
            }
        }
        report.expired = rt.store().expire(self.batch).await?;
        for mirror in &rt.inner.mirrors {
            if let Some(r) = mirror.run_if_due().await {
                report.mirrors.push(r);
            }
        }
        if report.handled() > 0 || report.expired > 0 || !report.errors.is_empty() {
            tracing::info!(
                handled = report.handled(),
                expired = report.expired,
                errors = report.errors.len(),
                "reconciliation pass"
            );
        }
        Ok(report)
    }

    /// Runs passes every `interval` in a background task until the handle is
    /// stopped or dropped.
    pub fn spawn(self) -> ReconcilerHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                // Each pass in a task of its own: a pass that panics (a
                // hook of the user's, say) is logged, and the next one runs.
                let this = self.clone();
                let pass = AbortOnDrop(tokio::spawn(async move { this.run_once().await }));
                match pass.join().await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "reconciliation pass failed"),
                    Err(e) => {
                        tracing::error!(error = %e, "reconciliation pass panicked; the next one runs after the interval")
                    }
                }
                let jitter = self.interval.mul_f64(fastrand::f64() / 10.0);
                tokio::select! {
                    () = tokio::time::sleep(self.interval.saturating_add(jitter)) => {}
                    changed = stopped.changed() => {
                        if changed.is_err() || *stopped.borrow() {
                            return;
                        }
                    }
                }
            }
        });
        ReconcilerHandle { stop, task }
    }

    async fn handle(&self, r: Record, now: Timestamp) -> Result<Outcome, Error> {
        if !self.links(&r) {
            return self.foreign(&r).await;
        }
        let outcome = match r.status {
            s if s.is_dead_letter() => self.acknowledge(r.clone()).await,
            s if s.is_active() && !r.lease_expired(now) => Ok(Outcome::Skipped),
            _ if r.kind == Kind::Workflow => self.recover(&r).await,
            Status::Pending => self.settle(&r, now).await,
            Status::Compensating => self.compensate(r.clone(), now).await,
            // A final record still due that is not a workflow: nothing is
            // left to follow up.
            s if s.is_final() => {
                let mut t = Transition::new(r.id.clone(), s, r.token, s);
                t.retention = r.expires_at.map(|at| {
                    Duration::from_millis(at.as_millis().saturating_sub(now.as_millis()))
                });
                match self.rt.write(&t).await {
                    Ok(()) | Err(Error::Fenced { .. }) => Ok(Outcome::Skipped),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(Outcome::Skipped),
        };
        if outcome.is_err() {
            // Invariant 10: a record that failed is looked at again after a
            // backoff of its own, not first thing in every pass.
            if let Err(e) = self.rt.reschedule(&r, self.delay(&r, now)).await {
                tracing::debug!(id = %r.id, error = %e, "could not reschedule");
            }
        }
        outcome
    }

    /// Whether this process links `r`'s operation (and so may act on it).
    fn links(&self, r: &Record) -> bool {
        self.rt.links(r.op(), r.kind)
    }

    /// Another service's record: left to its own processes, looked at again
    /// later, and named in one warning per operation (invariant 11).
    async fn foreign(&self, r: &Record) -> Result<Outcome, Error> {
        let first = self
            .warned
            .lock()
            .map(|mut warned| warned.insert(r.op().to_owned()))
            .unwrap_or(false);
        if first {
            tracing::warn!(
                op = r.op(),
                "due records of an operation this process does not link; left to the processes that link it"
            );
        }
        // Behind what is due now, and back within two intervals: a pass of
        // the service that links it is held up by no more than that.
        let later = self
            .interval
            .mul_f64(1.0 + fastrand::f64())
            .min(RESCHEDULE_CAP);
        self.rt.reschedule(r, later).await?;
        Ok(Outcome::Foreign)
    }

    /// How long a record this pass could not settle waits: twice as long as
    /// it has been waiting since it last changed, within the backoff's base
    /// and five minutes, drawn at random in its upper half so that many such
    /// records spread apart.
    fn delay(&self, r: &Record, now: Timestamp) -> Duration {
        let waited =
            Duration::from_millis(now.as_millis().saturating_sub(r.updated_at.as_millis()));
        let ceiling = waited
            .saturating_mul(2)
            .clamp(self.backoff.base.min(RESCHEDULE_CAP), RESCHEDULE_CAP);
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    async fn recover(&self, r: &Record) -> Result<Outcome, Error> {
        let recovered = match self.rt.recover(&r.id).await {
            Ok((recovered, _)) => recovered,
            Err(Error::Fenced { .. } | Error::WrongStatus { .. } | Error::InFlight { .. }) => {
                return Ok(Outcome::Skipped);
            }
            Err(e) => return Err(e),
        };
        Ok(match recovered {
            Recovered::Resumed => Outcome::Resumed,
            Recovered::RolledBack => Outcome::RolledBack,
            Recovered::Parked(parked) => Outcome::Parked(parked),
            Recovered::Rescheduled => Outcome::Rescheduled,
            Recovered::Other => Outcome::Skipped,
        })
    }

    /// A call whose holder vanished. A step of a workflow that is still
    /// pending is left to the workflow (its next run claims the step) and
    /// looked at again later; any other is settled here: released,
    /// probed, or parked.
    async fn settle(&self, r: &Record, now: Timestamp) -> Result<Outcome, Error> {
        if let Some(workflow) = &r.workflow
            && self
                .rt
                .store()
                .get(workflow)
                .await?
                .is_some_and(|w| w.status == Status::Pending)
        {
            self.rt.reschedule(r, self.delay(r, now)).await?;
            return Ok(Outcome::Rescheduled);
        }
        let outcome = match self.rt.settle_crashed(r).await? {
            Settled::Released => Outcome::Released,
            Settled::Probed => Outcome::Probed,
            Settled::Parked(parked) => Outcome::Parked(parked),
            Settled::Lost => return Ok(Outcome::Skipped),
        };
        // A rollback that stopped at this step may go on.
        self.rt.nudge_workflow_of(r).await?;
        Ok(outcome)
    }

    /// Compensates the record as listed, at the pass's clock: its claim is a
    /// compare-and-set, so a stale listing only loses it.
    async fn compensate(&self, r: Record, now: Timestamp) -> Result<Outcome, Error> {
        let policy = (self.max_attempts, self.backoff);
        match self.rt.compensate_record(r, now, policy).await {
            Ok((done, None)) if done.status == Status::Compensated => Ok(Outcome::Compensated),
            Ok((_, None)) => Ok(Outcome::Skipped),
            Ok((parked, Some(_))) if parked.status == Status::CompensationFailed => {
                Ok(Outcome::Parked(Box::new(parked)))
            }
            Ok((_, Some(_))) => Ok(Outcome::Retried),
            Err(Error::Fenced { .. } | Error::WrongStatus { .. }) => Ok(Outcome::Skipped),
            Err(e) => Err(e),
        }
    }

    /// Raises the alert of a new dead letter, at least once and, among
    /// reconcilers that stay up, exactly once: a same-status transition that
    /// takes a new token claims the alert (only one reconciler wins it) and
    /// leaves the record due again after the lease; the hook runs; a second one
    /// acknowledges it. A reconciler that dies between the two leaves the alert
    /// to be raised again after the lease, never lost.
    async fn acknowledge(&self, r: Record) -> Result<Outcome, Error> {
        if r.due_at.is_none() {
            return Ok(Outcome::Skipped);
        }
        let lease = self.rt.inner.config.lease;
        let mut claim = Transition::new(r.id.clone(), r.status, r.token, r.status);
        claim.lease = LeaseChange::Acquire(lease);
        claim.retry_after = Some(lease);
        let claimed = match self.rt.apply(&claim).await {
            Ok(claimed) => claimed,
            Err(Error::Fenced { .. }) => return Ok(Outcome::Skipped),
            Err(e) => return Err(e),
        };
        tracing::warn!(id = %claimed.id, status = %claimed.status, error = ?claimed.error, "dead letter: needs an operator");
        if let Some(alert) = &self.alert {
            alert(&claimed);
        }
        let mut ack = Transition::new(
            claimed.id.clone(),
            claimed.status,
            claimed.token,
            claimed.status,
        );
        ack.lease = LeaseChange::Acquire(lease);
        match self.rt.write(&ack).await {
            // Raised either way; a lost acknowledgement raises it once more
            // after the lease.
            Ok(()) | Err(Error::Fenced { .. }) => Ok(Outcome::Alerted),
            Err(e) => {
                tracing::warn!(id = %claimed.id, error = %e, "alert raised but not acknowledged; it is raised again after the lease");
                Ok(Outcome::Alerted)
            }
        }
    }
}

/// A task that is aborted when this is dropped: a pass stops with the
/// reconciler running it (as a crash would stop both).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reconciler running in the background; see [`Reconciler::spawn`].
#[derive(Debug)]
pub struct ReconcilerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ReconcilerHandle {
    /// Stops after the pass under way: what it claimed is finished, nothing is
    /// left half-done.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Whether the background task has ended. It ends only when stopped or
    /// aborted: a pass that fails or panics is logged and the next one runs.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops at once, as a crash would: records it was working on keep their
    /// lease until it runs out, then another reconciler takes them over.
    pub fn abort(self) {
        self.task.abort();
    }
}
