//! The runtime: a store, the defaults every call uses, the catalog, and counters.
//!
//! Annotated functions find the runtime ambiently: the one whose
//! [`Runtime::scope`] the call runs in, else the one made global with
//! [`Runtime::install_global`]. With neither, a call returns
//! [`Error::NoRuntime`](crate::Error::NoRuntime) and never panics.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::catalog::{Catalog, Compensation};
use crate::error::{Error, Human, StoreError};
use crate::record::{
    AttemptsChange, Kind, LeaseChange, Record, RecordId, Status, Transition, Transitioned,
};
use crate::store::{Query, Store};

tokio::task_local! {
    static CURRENT: Runtime;
}

static GLOBAL: OnceLock<Runtime> = OnceLock::new();

/// How long a record is kept unless [`RuntimeBuilder::retention`] says
/// otherwise: a day.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(86_400);

/// Exponential backoff: attempt `n` waits `min(cap, base * 2^(n-1))`, or with
/// full jitter (the default) a random time in `[0, that]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay's upper bound.
    pub base: Duration,
    /// The largest delay.
    pub cap: Duration,
    /// Whether to draw the delay at random below its ceiling (spreads retries
    /// of many records apart).
    pub jitter: bool,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        let ceiling = self.base.saturating_mul(1u32 << shift).min(self.cap);
        if !self.jitter {
            return ceiling;
        }
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ms))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) in_flight_wait: Duration,
    pub(crate) retry_backoff: Backoff,
    pub(crate) compensation_attempts: u32,
    pub(crate) recovery_attempts: u32,
}

/// The longest duration a setting may have: a century. Every store can hold
/// a time this far ahead of now, and the time arithmetic never overflows.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Counts of what the runtime did since it was built; see [`Runtime::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Calls of annotated functions.
    pub calls: u64,
    /// Bodies run (a claim was won).
    pub executions: u64,
    /// Calls answered from a record without running the body.
    pub replays: u64,
    /// Bodies run again by `retry = N`.
    pub retries: u64,
    /// Expired claims taken over.
    pub takeovers: u64,
    /// Calls that waited for an in-flight duplicate.
    pub in_flight_waits: u64,
    /// Calls refused with `InFlight`.
    pub in_flight_rejections: u64,
    /// Calls refused with `KeyReuse`.
    pub key_reuses: u64,
    /// Writes refused because a newer holder took over.
    pub fenced: u64,
    /// Compensations that succeeded.
    pub compensations: u64,
    /// Compensation runs that failed.
    pub compensation_failures: u64,
    /// Records this runtime moved to a dead-letter status.
    pub dead_letters: u64,
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    pub(crate) calls: AtomicU64,
    pub(crate) executions: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) in_flight_waits: AtomicU64,
    pub(crate) in_flight_rejections: AtomicU64,
    pub(crate) key_reuses: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) compensations: AtomicU64,
    pub(crate) compensation_failures: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    pub(crate) catalog: Catalog,
    pub(crate) counters: AtomicCounters,
    /// Calls running in this process, so local duplicates wake when they finish
    /// instead of polling the store.
    pub(crate) running: Mutex<HashMap<RecordId, Arc<Notify>>>,
    /// Registered state mirrors.
    pub(crate) mirrors: Vec<crate::mirror::Registered>,
    /// How many calls wait in `running`; while zero, finishing calls skip the lock.
    pub(crate) waiters: std::sync::atomic::AtomicUsize,
    /// Idempotent operations named at run time (HTTP layers): linked like
    /// those of the catalog, with nothing to compensate.
    pub(crate) named: std::sync::RwLock<std::collections::BTreeSet<String>>,
}

/// The tempox runtime: where annotated calls record themselves.
///
/// Cheap to clone; clones share everything.
///
/// ```
/// # extern crate tempox_runtime as tempox;
/// use std::time::Duration;
/// use tempox::{Runtime, store::MemoryStore};
///
/// # async fn demo() -> Result<(), tempox::Error> {
/// let rt = Runtime::builder()
///     .store(MemoryStore::new())
///     .lease(Duration::from_secs(30))
///     .retention(Duration::from_secs(86_400))
///     .build()?;
/// let answer = rt.scope(async { 42 }).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .field("operations", &self.inner.catalog.len())
            .finish()
    }
}

/// Builds a [`Runtime`]; see [`Runtime::builder`].
#[derive(Debug)]
pub struct RuntimeBuilder {
    store: Option<Arc<dyn Store>>,
    config: Config,
    mirrors: Vec<crate::mirror::Registered>,
}

impl RuntimeBuilder {
    /// The store records live in (required).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Registers a state [`Mirror`](crate::mirror::Mirror): the reconciler
    /// compares its intended and observed states on its interval and repairs the
    /// difference.
    pub fn mirror(mut self, mirror: impl crate::mirror::Mirror) -> Self {
        self.mirrors.push(crate::mirror::Registered::new(mirror));
        self
    }

    /// A store already shared behind an `Arc`.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// How long a claim holds before another caller may take it over; renewed every
    /// third of it while the body runs. Default 30 s; at least 10 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How long final records are kept (and replayed). Default 24 h.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// How long a duplicate with `in_flight = wait` waits for the first call before
    /// it gets `InFlight`. Default 30 s.
    pub fn in_flight_wait(mut self, wait: Duration) -> Self {
        self.config.in_flight_wait = wait;
        self
    }

    /// Backoff between runs of `retry = N` bodies and failed compensations.
    /// Default: base 100 ms, cap 10 s, full jitter.
    pub fn retry_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.config.retry_backoff = Backoff {
            base,
            cap,
            jitter: true,
        };
        self
    }

    /// Runs of a failing compensation before it is dead-lettered as
    /// `CompensationFailed`. Default 5.
    pub fn compensation_attempts(mut self, attempts: u32) -> Self {
        self.config.compensation_attempts = attempts;
        self
    }

    /// How many times a call or workflow whose holder died is run again
    /// before the reconciler parks it as `RecoveryFailed` instead (a body that
    /// crashes its process every time would otherwise be run for ever).
    /// Default 5: parked when found crashed after its sixth run.
    pub fn recovery_attempts(mut self, attempts: u32) -> Self {
        self.config.recovery_attempts = attempts;
        self
    }

    /// Validates the settings and loads the catalog.
    ///
    /// # Errors
    /// - [`Error::Config`] naming the setting: no `store`; a `lease` under 10 ms;
    ///   a zero `retention`; a backoff whose cap is below its base; zero
    ///   `compensation_attempts`; a duration over a century (no store could
    ///   hold the time it ends at).
    /// - [`Error::DuplicateOperation`] when two operations share a name.
    pub fn build(self) -> Result<Runtime, Error> {
        let config = self.config;
        let bad = |setting, message: String| Err(Error::Config { setting, message });
        let Some(store) = self.store else {
            return bad(
                "store",
                "no store was set; call `.store(..)` with e.g. `MemoryStore::new()`".into(),
            );
        };
        for (setting, d) in [
            ("lease", config.lease),
            ("retention", config.retention),
            ("in_flight_wait", config.in_flight_wait),
            ("retry_backoff", config.retry_backoff.cap),
        ] {
            if d > MAX_DURATION {
                return bad(
                    setting,
                    format!(
                        "{} is too long; at most {} (a century)",
                        Human(d),
                        Human(MAX_DURATION)
                    ),
                );
            }
        }
        if config.lease < Duration::from_millis(10) {
            return bad(
                "lease",
                format!(
                    "{} is too short; a lease is at least 10ms",
                    Human(config.lease)
                ),
            );
        }
        if config.retention.is_zero() {
            return bad("retention", "must be longer than zero".into());
        }
        if config.retry_backoff.cap < config.retry_backoff.base {
            return bad(
                "retry_backoff",
                format!(
                    "the cap ({}) is below the base ({})",
                    Human(config.retry_backoff.cap),
                    Human(config.retry_backoff.base)
                ),
            );
        }
        if config.compensation_attempts == 0 {
            return bad("compensation_attempts", "must be at least 1".into());
        }
        let catalog = Catalog::load()?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                store,
                config,
                catalog,
                counters: AtomicCounters::default(),
                running: Mutex::new(HashMap::new()),
                mirrors: self.mirrors,
                waiters: std::sync::atomic::AtomicUsize::new(0),
                named: std::sync::RwLock::new(std::collections::BTreeSet::new()),
            }),
        })
    }
}

impl Runtime {
    /// A builder with the default settings and no store.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            store: None,
            mirrors: Vec::new(),
            config: Config {
                lease: Duration::from_secs(30),
                retention: DEFAULT_RETENTION,
                in_flight_wait: Duration::from_secs(30),
                retry_backoff: Backoff {
                    base: Duration::from_millis(100),
                    cap: Duration::from_secs(10),
                    jitter: true,
                },
                compensation_attempts: 5,
                recovery_attempts: 5,
            },
        }
    }

    /// Runs `fut` with this runtime as the ambient one for every annotated call it
    /// makes (tasks it spawns need their own `scope`).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        CURRENT.scope(self.clone(), fut).await
    }

    /// Makes this runtime the process-wide default, used by calls outside any
    /// [`scope`](Self::scope).
    ///
    /// # Errors
    /// [`Error::Config`] if a global runtime is already installed.
    pub fn install_global(&self) -> Result<(), Error> {
        GLOBAL.set(self.clone()).map_err(|_| Error::Config {
            setting: "install_global",
            message: "a global runtime is already installed".into(),
        })
    }

    /// The ambient runtime: the innermost [`scope`](Self::scope), else the global one.
    pub fn current() -> Option<Runtime> {
        CURRENT
            .try_with(Runtime::clone)
            .ok()
            .or_else(|| GLOBAL.get().cloned())
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        // Through `&dyn Store`, not `Arc<dyn Store>`'s own `Store` impl: one boxed
        // future per store call instead of two.
        &*self.inner.store
    }

    /// The operations linked into this program.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Registers an idempotent operation named at run time (an HTTP
    /// layer's), so this runtime's reconciler settles its records.
    #[cfg(feature = "http")]
    pub(crate) fn register_named(&self, name: &str) {
        if let Ok(mut named) = self.inner.named.write() {
            named.insert(name.to_owned());
        }
    }

    /// Whether this process links the operation `name` of a record of `kind`
    /// (and so may act on its records, invariant 11).
    pub(crate) fn links(&self, name: &str, kind: crate::record::Kind) -> bool {
        match kind {
            crate::record::Kind::Workflow => self.inner.catalog.workflow(name).is_some(),
            _ => {
                self.inner.catalog.get(name).is_some()
                    || self
                        .inner
                        .named
                        .read()
                        .is_ok_and(|named| named.contains(name))
            }
        }
    }

    /// What this runtime has done so far.
    pub fn counters(&self) -> Counters {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            calls: get(&c.calls),
            executions: get(&c.executions),
            replays: get(&c.replays),
            retries: get(&c.retries),
            takeovers: get(&c.takeovers),
            in_flight_waits: get(&c.in_flight_waits),
            in_flight_rejections: get(&c.in_flight_rejections),
            key_reuses: get(&c.key_reuses),
            fenced: get(&c.fenced),
            compensations: get(&c.compensations),
            compensation_failures: get(&c.compensation_failures),
            dead_letters: get(&c.dead_letters),
        }
    }

    /// The record with this id.
    ///
    /// # Errors
    /// [`Error::Store`] when the store fails.
    pub async fn record(&self, id: &RecordId) -> Result<Option<Record>, Error> {
        Ok(self.store().get(id).await?)
    }

    /// Records parked for an operator (`CompensationFailed`, `OutcomeUnknown`).
    ///
    /// # Errors
    /// [`Error::Store`] when the store fails.
    pub async fn dead_letters(&self) -> Result<Vec<Record>, Error> {
        self.list_all(Query::statuses(Status::DEAD_LETTERS)).await
    }

    /// Every record matching `query`, read page by page.
    pub(crate) async fn list_all(&self, query: Query) -> Result<Vec<Record>, Error> {
        let mut all = Vec::new();
        self.for_each_page(query, |page| all.extend(page)).await?;
        Ok(all)
    }

    /// Every record `query` matches, handed to `f` a page (of at most 1000)
    /// at a time, so that only one page is held.
    pub(crate) async fn for_each_page(
        &self,
        mut query: Query,
        mut f: impl FnMut(Vec<Record>),
    ) -> Result<(), Error> {
        query.limit = 1000;
        loop {
            let page = self.store().list(&query).await?;
            let done = page.len() < query.limit;
            query.after = page.last().map(|r| r.id.clone());
            f(page);
            if done {
                return Ok(());
            }
        }
    }

    /// Operator: tries a dead letter again, with its attempts reset, and
    /// keeps a note on the record:
    /// - `CompensationFailed`: compensated again (by the reconciler, or by a
    ///   rollback waiting on it);
    /// - `RecoveryFailed`: a workflow is run again (recovered by the
    ///   reconciler); a call's key is freed, so its next call runs it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongStatus`] for any other status,
    /// [`Error::Store`].
    pub async fn retry(&self, id: &RecordId) -> Result<Record, Error> {
        let r = self.expect_record(id).await?;
        let to = match (r.status, r.kind) {
            (Status::CompensationFailed, _) => Status::Compensating,
            (Status::RecoveryFailed, Kind::Workflow) => Status::Pending,
            (Status::RecoveryFailed, _) => Status::Released,
            _ => {
                return Err(Error::WrongStatus {
                    action: "retry",
                    id: id.to_string(),
                    status: r.status,
                });
            }
        };
        let mut t = Transition::new(id.clone(), r.status, r.token, to);
        t.attempts = AttemptsChange::Set(0);
        t.note = Some(format!("{}: operator retry", self.now().await?));
        if to.is_final() {
            return self.apply_final(t, &r).await;
        }
        self.apply(&t).await
    }

    /// Operator: closes a dead letter (or a stalled rollback) as `Resolved`, keeping
    /// `note` on the record. A step resolved this way no longer stops its
    /// workflow's rollback, which then goes on by itself.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongStatus`] unless the record is a dead
    /// letter or `PartiallyRolledBack`, [`Error::Store`].
    pub async fn resolve(&self, id: &RecordId, note: &str) -> Result<Record, Error> {
        let r = self.expect_record(id).await?;
        if !crate::record::is_legal(r.status, Status::Resolved) || r.status == Status::Resolved {
            return Err(Error::WrongStatus {
                action: "resolve",
                id: id.to_string(),
                status: r.status,
            });
        }
        let mut t = Transition::new(id.clone(), r.status, r.token, Status::Resolved);
        t.note = Some(format!("{}: resolved: {note}", self.now().await?));
        let resolved = self.apply_final(t, &r).await?;
        if r.kind == Kind::Workflow && r.workflow.is_none() {
            // Its steps' retention starts with its own.
            if let Err(e) = self
                .start_retention(&resolved, self.inner.config.retention)
                .await
            {
                tracing::warn!(%id, error = %e, "could not start the retention of the steps");
            }
        }
        if let Err(e) = self.nudge_workflow_of(&resolved).await {
            tracing::warn!(%id, error = %e, "could not reschedule the workflow; its rollback goes on at its next look");
        }
        Ok(resolved)
    }

    /// Compensates a completed call from its record alone, through the catalog:
    /// claims the compensation (compare-and-set to `Compensating` with a new
    /// token), runs it, and records `Compensated`, or schedules a retry with
    /// backoff, or parks it as `CompensationFailed` after the last attempt.
    ///
    /// Works in any process that links the operation: the original call need not
    /// have run here (invariant 5).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::WrongStatus`] if the record is neither
    /// `Completed` nor a `Compensating` whose lease has run out;
    /// [`Error::Compensation`] when it ran and failed (the record says what
    /// happens next); [`Error::Fenced`] if another holder took it over meanwhile.
    pub async fn compensate(&self, id: &RecordId) -> Result<Record, Error> {
        let policy = (
            self.inner.config.compensation_attempts,
            self.inner.config.retry_backoff,
        );
        let r = self.expect_record(id).await?;
        let now = self.now().await?;
        match self.compensate_record(r, now, policy).await? {
            (record, None) => Ok(record),
            (_, Some(failed)) => Err(failed),
        }
    }

    /// [`compensate`](Self::compensate) of a record already read, at `now`, with
    /// `(max attempts, backoff)` of the caller's (the reconciler passes what it
    /// listed and its pass's clock: no second read). Answers the record last
    /// written, and the [`Error::Compensation`] when the compensation ran and
    /// failed.
    pub(crate) async fn compensate_record(
        &self,
        r: Record,
        now: crate::record::Timestamp,
        policy: (u32, Backoff),
    ) -> Result<(Record, Option<Error>), Error> {
        let id = &r.id;
        let claimable = r.status == Status::Completed
            || (r.status == Status::Compensating && r.lease_expired(now));
        if !claimable {
            return Err(Error::WrongStatus {
                action: "compensate",
                id: id.to_string(),
                status: r.status,
            });
        }
        let entry = self.inner.catalog.get(r.op());
        if let Some(Compensation::Rollback) = entry.map(|e| e.compensation) {
            // A workflow that was a step: undone by rolling back its own steps.
            let strict = self
                .inner
                .catalog
                .workflow(r.op())
                .is_none_or(|w| !w.continue_past_dead_letters);
            return Box::pin(crate::workflow::roll_back_completed(self, &r, strict))
                .await
                .map(|record| (record, None));
        }
        if entry.is_none() {
            // Invariant 11: another service's record; its own processes
            // compensate it. Running nothing is not a failed attempt.
            return Err(Error::Config {
                setting: "operation",
                message: format!(
                    "no operation named `{}` is linked into this program, so it cannot compensate `{id}`",
                    r.op()
                ),
            });
        }
        if r.output.is_none()
            && matches!(
                entry.map(|e| e.compensation),
                Some(Compensation::Call { .. })
            )
        {
            // Damaged: compensating `null` would undo something else.
            return Err(crate::invoke::missing_output(&r));
        }
        let mut claim = Transition::new(id.clone(), r.status, r.token, Status::Compensating);
        claim.lease = LeaseChange::Acquire(self.inner.config.lease);
        claim.if_lease_expired = true;
        claim.attempts = if r.status == Status::Completed {
            AttemptsChange::Set(1)
        } else {
            AttemptsChange::Increment
        };
        // Invariant 5: the claim is a compare-and-set, so only one caller runs it.
        let held = self.apply(&claim).await?;
        let (compensation, run) = match entry.map(|e| e.compensation) {
            Some(Compensation::Call { name, run }) => (name, run),
            nothing_to_run => {
                let outcome = match nothing_to_run {
                    Some(Compensation::Noop) => Ok(()),
                    Some(_) => Err(format!("`{}` declares no compensation", r.op())),
                    None => Err(format!(
                        "no operation named `{}` is linked into this program",
                        r.op()
                    )),
                };
                let record = self.finish_compensation(&held, outcome, policy).await?;
                return Ok((record, None));
            }
        };
        let Some(output) = held.output.as_deref().map(<[u8]>::to_vec) else {
            return Err(crate::invoke::missing_output(&held));
        };
        let lease = crate::invoke::Held::from_ref(&held);
        let outcome = crate::invoke::heartbeat(self, &lease, self.scope(run(output))).await;
        let record = self
            .finish_compensation(&held, outcome.clone(), policy)
            .await?;
        if record.status == Status::Compensated
            && let Err(e) = self.nudge_workflow_of(&record).await
        {
            tracing::warn!(%id, error = %e, "could not reschedule the workflow; its rollback goes on at its next look");
        }
        let failed = outcome.err().map(|message| Error::Compensation {
            op: r.op().to_owned(),
            compensation: compensation.to_owned(),
            message,
        });
        Ok((record, failed))
    }

    async fn finish_compensation(
        &self,
        held: &Record,
        outcome: Result<(), String>,
        (attempts, backoff): (u32, Backoff),
    ) -> Result<Record, Error> {
        let c = &self.inner.counters;
        let mut t = Transition::new(
            held.id.clone(),
            Status::Compensating,
            held.token,
            Status::Compensated,
        );
        match outcome {
            Ok(()) => {
                bump(&c.compensations);
                return self.apply_final(t, held).await;
            }
            Err(message) => {
                bump(&c.compensation_failures);
                if held.attempts >= attempts {
                    bump(&c.dead_letters);
                    t.to = Status::CompensationFailed;
                    tracing::warn!(id = %held.id, attempts = held.attempts, error = %message, "compensation dead-lettered");
                } else {
                    t.to = Status::Compensating;
                    t.retry_after = Some(backoff.delay(held.attempts));
                }
                t.error = Some(message);
            }
        }
        self.apply(&t).await
    }

    async fn expect_record(&self, id: &RecordId) -> Result<Record, Error> {
        self.store()
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })
    }

    async fn now(&self) -> Result<crate::record::Timestamp, StoreError> {
        self.store().now().await
    }

    /// Applies `t`, turning a lost compare-and-set into `Fenced`.
    pub(crate) async fn apply(&self, t: &Transition) -> Result<Record, Error> {
        if let Some(store) = self.store().immediate() {
            return self.applied(t, store.transition_now(t));
        }
        self.applied(t, self.store().transition(t).await)
    }

    /// [`apply`](Self::apply) for a caller that needs no record back; an
    /// immediate store then copies none out.
    pub(crate) async fn write(&self, t: &Transition) -> Result<(), Error> {
        // A new lease means a new token: logged from the record written.
        if matches!(t.lease, LeaseChange::Acquire(_)) {
            return self.apply(t).await.map(drop);
        }
        let applied = match self.store().immediate() {
            Some(store) => store.apply_now(t)?,
            None => self.store().apply(t).await?,
        };
        if applied {
            // Without a new lease the token stays the one `t` holds.
            tracing::debug!(id = %t.id, from = %t.from, to = %t.to, token = t.token, "transition");
            Ok(())
        } else {
            Err(self.fenced(t))
        }
    }

    /// What the store answered to `t`, turning a lost compare-and-set into `Fenced`.
    fn applied(
        &self,
        t: &Transition,
        outcome: Result<Transitioned, StoreError>,
    ) -> Result<Record, Error> {
        match outcome? {
            Transitioned::Applied(r) => {
                tracing::debug!(id = %r.id, from = %t.from, to = %r.status, token = r.token, "transition");
                Ok(r)
            }
            Transitioned::Conflict(_) => Err(self.fenced(t)),
        }
    }

    /// `t` lost its compare-and-set.
    fn fenced(&self, t: &Transition) -> Error {
        bump(&self.inner.counters.fenced);
        Error::Fenced {
            op: t.id.op().to_owned(),
            key: t.id.key().to_owned(),
            token: t.token,
        }
    }
}
