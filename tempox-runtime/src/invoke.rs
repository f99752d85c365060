//! The call path every annotated function takes:
//! claim (write-ahead) → run the body while renewing the lease → record the outcome.
//!
//! The generated wrapper calls [`begin`], which either answers from the record
//! (replay, `KeyReuse`, `InFlight`, ...) or hands back a [`Guard`] holding the
//! claim; the wrapper then runs its body through [`Guard::run`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::catalog::BoxFuture;
use crate::error::{Error, StoreError};
use crate::key::{Fingerprint, Key, KeyError};
use crate::operation::{InFlight, Keying, Operation, OperationError, Output};
use crate::record::{
    AttemptsChange, Blob, ClaimRequest, Claimed, Kind, LeaseChange, OnExpired, Record, RecordId,
    Status, Timestamp, Transition,
};
use crate::runtime::{Runtime, bump};

/// What [`begin`] decided.
#[derive(Debug)]
pub enum Begin<Op: Operation> {
    /// The call is answered without running the body: a replayed output, or an error.
    Done(Result<Op::Output, Op::Error>),
    /// The caller holds the claim: run the body.
    Run(Guard<Op>),
    /// The caller took over a non-idempotent claim whose holder vanished: ask the
    /// probe whether the effect happened, then [`Guard::probed`].
    Probe(Guard<Op>),
}

/// A call whose key, fingerprint and input are computed, ready to claim.
#[derive(Debug)]
pub struct Prepared {
    req: ClaimRequest,
}

#[cfg(feature = "http")]
impl Prepared {
    /// The same call recorded under operation `op` (a name given at run
    /// time, as an HTTP layer's): its id becomes `op/<key>`.
    pub(crate) fn named(mut self, op: &str) -> Self {
        self.req.id = RecordId::from_parts(op, self.req.id.key());
        self
    }
}

/// Computes what a call of `Op` claims: its key (from `key = <expr>`, from the
/// arguments, or unique), the arguments' fingerprint and their JSON.
///
/// Synchronous, so the borrowed arguments are not held across an `.await`.
pub fn prepare<Op: Operation, A: Serialize + ?Sized>(
    key: Option<Result<Key, KeyError>>,
    args: &A,
) -> Result<Prepared, Error> {
    let op = Op::NAME;
    let fingerprint =
        Fingerprint::of(args).map_err(|e| codec(op, "encode", "the arguments", e.message()))?;
    let id = match (Op::OPTIONS.keying, key) {
        (_, Some(key)) => RecordId::new(
            op,
            &key.map_err(|reason| Error::InvalidKey {
                op: op.to_owned(),
                reason,
            })?,
        ),
        (Keying::Unique, None) => RecordId::new(op, &unique_key()),
        // Hex digits: always a valid key.
        (_, None) => {
            let hex = fingerprint.hex();
            RecordId::from_parts(op, std::str::from_utf8(&hex).unwrap_or_default())
        }
    };
    let input = to_json(|buf| serde_json::to_writer(buf, args))
        .map_err(|e| codec(op, "encode", "the arguments", e))?;
    let on_expired = if Op::KIND == Kind::NonIdempotent && !Op::OPTIONS.probe {
        OnExpired::MarkUnknown
    } else {
        OnExpired::TakeOver
    };
    Ok(Prepared {
        req: ClaimRequest {
            id,
            kind: Op::KIND,
            fingerprint,
            input,
            // Set from the runtime's default in `begin` unless the operation has one.
            lease: Op::OPTIONS.lease.unwrap_or_default(),
            on_expired,
            workflow: None,
            step: None,
        },
    })
}

/// Claims a prepared call of `Op` and decides what happens next.
pub async fn begin<Op: Operation>(call: Result<Prepared, Error>) -> Begin<Op> {
    let Some(rt) = Runtime::current() else {
        return Begin::Done(Err(Op::Error::from_tempox(Error::NoRuntime {
            op: Op::NAME.to_owned(),
        })));
    };
    bump(&rt.inner.counters.calls);
    let result = match call {
        Ok(Prepared { mut req }) => {
            if Op::OPTIONS.lease.is_none() {
                req.lease = rt.inner.config.lease;
            }
            match crate::workflow::assign_step(&mut req) {
                Ok(()) => claim::<Op>(rt, req).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(begin) => begin,
        Err(e) => {
            crate::workflow::note_in_doubt(&e);
            Begin::Done(Err(Op::Error::from_tempox(e)))
        }
    }
}

fn codec(op: &str, action: &'static str, what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Codec {
        op: op.to_owned(),
        action,
        what,
        message: e.to_string(),
    }
}

/// A key no other call will ever have: milliseconds, then 64 random bits.
fn unique_key() -> Key {
    let s = format!(
        "{:012x}{:016x}",
        Timestamp::now().as_millis(),
        fastrand::u64(..)
    );
    Key::new(s).unwrap_or_else(|_| Fingerprint::from_bytes([0; 16]).to_key())
}

async fn claim<Op: Operation>(rt: Runtime, req: ClaimRequest) -> Result<Begin<Op>, Error> {
    let span = tracing::debug_span!("tempox.call", op = Op::NAME, key = req.id.key());
    let claimed = store_claim(&rt, &req, &span).await?;
    match decide::<Op>(&rt, &req, claimed, &span)? {
        Some(begin) => Ok(begin),
        // Rare: its own box keeps the waiting machinery out of every call's future.
        None => Box::pin(wait::<Op>(rt, req, span)).await,
    }
}

/// `req` claimed in `span`: at once when the store is immediate, else through
/// its boxed future.
async fn store_claim(
    rt: &Runtime,
    req: &ClaimRequest,
    span: &tracing::Span,
) -> Result<Claimed, Error> {
    let claimed = match rt.store().immediate() {
        Some(store) => span.in_scope(|| store.claim_now(req))?,
        None => rt.store().claim(req).instrument(span.clone()).await?,
    };
    let rolled_back = match &claimed {
        Claimed::Acquired {
            record,
            previous: Some(Status::Released),
        } if record.workflow.is_some() => crate::workflow::rolling_back().map(|w| (record, w)),
        _ => None,
    };
    match rolled_back {
        // A workflow that recovery rolls back starts nothing new: a step
        // whose record was released (it took no effect) is given back, as
        // one that never ran is not claimed at all.
        Some((record, workflow)) => {
            let mut t = Transition::new(
                record.id.clone(),
                Status::Pending,
                record.token,
                Status::Released,
            );
            t.error = Some("not started: the workflow is being rolled back".into());
            rt.write(&t).await?;
            Err(Error::RollbackRequested { workflow })
        }
        None => Ok(claimed),
    }
}

fn decide<Op: Operation>(
    rt: &Runtime,
    req: &ClaimRequest,
    claimed: Claimed,
    span: &tracing::Span,
) -> Result<Option<Begin<Op>>, Error> {
    let op = Op::NAME;
    let counters = &rt.inner.counters;
    let existing = match claimed {
        Claimed::Acquired { record, previous } => {
            if previous == Some(Status::Pending) {
                bump(&counters.takeovers);
                tracing::debug!(parent: span, token = record.token, "took over an expired claim");
            }
            let guard = Guard::new(rt.clone(), record, span.clone());
            return Ok(Some(
                if previous == Some(Status::Pending) && Op::KIND == Kind::NonIdempotent {
                    Begin::Probe(guard)
                } else {
                    Begin::Run(guard)
                },
            ));
        }
        Claimed::MarkedUnknown(record) => {
            bump(&counters.dead_letters);
            tracing::warn!(parent: span, id = %record.id, "lease expired on a non-idempotent call without a probe; parked as outcome_unknown");
            return Err(Error::OutcomeUnknown {
                op: op.to_owned(),
                key: req.id.key().to_owned(),
            });
        }
        Claimed::Existing(record) => record,
    };
    // Invariant 2: another request's result is never replayed.
    if existing.fingerprint != req.fingerprint {
        bump(&counters.key_reuses);
        return Err(Error::KeyReuse {
            op: op.to_owned(),
            key: req.id.key().to_owned(),
        });
    }
    match existing.status {
        Status::Completed => {
            bump(&counters.replays);
            replay_output::<Op>(&existing).map(|r| Some(Begin::Done(r)))
        }
        Status::Failed => {
            bump(&counters.replays);
            let (Some(error_codec), Some(bytes)) = (Op::ERROR_CODEC, existing.output.as_deref())
            else {
                return Err(closed(&existing));
            };
            let error = (error_codec.decode)(bytes)
                .map_err(|e| codec(op, "decode", "the cached error", e))?;
            Ok(Some(Begin::Done(Err(error))))
        }
        // Another call with the key is running.
        Status::Pending => Ok(None),
        Status::OutcomeUnknown => Err(Error::OutcomeUnknown {
            op: op.to_owned(),
            key: req.id.key().to_owned(),
        }),
        _ => Err(closed(&existing)),
    }
}

/// A duplicate of a running call: `in_flight = reject` fails at once; `wait`
/// waits (woken by a finishing call of this process, else polling the store
/// with backoff) until the first call's outcome is recorded or its lease runs
/// out, bounded by the runtime's `in_flight_wait`.
async fn wait<Op: Operation>(
    rt: Runtime,
    req: ClaimRequest,
    span: tracing::Span,
) -> Result<Begin<Op>, Error> {
    let counters = &rt.inner.counters;
    let in_flight = || {
        bump(&counters.in_flight_rejections);
        Err(Error::InFlight {
            op: Op::NAME.to_owned(),
            key: req.id.key().to_owned(),
        })
    };
    if Op::OPTIONS.in_flight == InFlight::Reject || crate::workflow::recovering() {
        return in_flight();
    }
    bump(&counters.in_flight_waits);
    let mut waiting = Waiting::new(&rt, &req.id, Instant::now());
    loop {
        let now = Instant::now();
        if now >= waiting.deadline {
            return in_flight();
        }
        let pause = waiting.next_pause(now);
        let notify = waiting.notify.clone();
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before the store is read, so a finish in between still wakes us.
        notified.as_mut().enable();
        let claimed = store_claim(&rt, &req, &span).await?;
        match decide::<Op>(&rt, &req, claimed, &span)? {
            Some(begin) => return Ok(begin),
            None => {
                let _ = tokio::time::timeout(pause, notified).await;
            }
        }
    }
}

/// JSON of `value` in one exactly-sized allocation (serialized into a reused
/// buffer first: this runs twice on every fresh call).
fn to_json(
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<Blob, serde_json::Error> {
    crate::key::with_scratch(|buf| write(&mut *buf).map(|()| Blob::from(&buf[..])))
}

fn closed(r: &Record) -> Error {
    Error::Closed {
        op: r.op().to_owned(),
        key: r.key().to_owned(),
        status: r.status,
        error: r.error.clone(),
    }
}

fn replay_output<Op: Operation>(r: &Record) -> Result<Result<Op::Output, Op::Error>, Error> {
    // Every completed record holds its output: one without is damaged,
    // never a replay of `null` (an `Option` would come back `None`).
    let bytes = r.output.as_deref().ok_or_else(|| missing_output(r))?;
    Op::Output::decode(bytes)
        .map(Ok)
        .map_err(|e| codec(Op::NAME, "decode", "the recorded output", e))
}

/// The error for a completed record `r` that holds no output.
pub(crate) fn missing_output(r: &Record) -> Error {
    Error::Store {
        source: StoreError::new(
            crate::error::StoreErrorKind::Corrupt,
            format!(
                "record `{}` is corrupt: it is completed but holds no `output`",
                r.id
            ),
        ),
    }
}

/// A duplicate waiting for the first call with its key.
struct Waiting {
    rt: Runtime,
    id: RecordId,
    notify: Arc<Notify>,
    deadline: Instant,
    pause: Duration,
}

impl Waiting {
    fn new(rt: &Runtime, id: &RecordId, now: Instant) -> Self {
        rt.inner
            .waiters
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let notify = {
            let mut running = lock(&rt.inner.running);
            running.entry(id.clone()).or_default().clone()
        };
        Waiting {
            rt: rt.clone(),
            id: id.clone(),
            notify,
            deadline: now + rt.inner.config.in_flight_wait,
            pause: Duration::from_millis(1),
        }
    }

    /// How long to wait before reading the store again: doubling from 1 ms to
    /// 100 ms (a holder in another process cannot wake us), never past the deadline.
    fn next_pause(&mut self, now: Instant) -> Duration {
        let pause = self.pause.min(self.deadline.saturating_duration_since(now));
        self.pause = (self.pause * 2).min(Duration::from_millis(100));
        pause
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.rt
            .inner
            .waiters
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let mut running = lock(&self.rt.inner.running);
        // The map and this waiter hold the only references: nobody else waits.
        if running
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            running.remove(&self.id);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the holder of a claim keeps of its record: enough to renew the lease
/// and to write the outcome.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) id: RecordId,
    pub(crate) status: Status,
    pub(crate) token: u64,
    /// The lease's length as written (`None`: the runtime's).
    lease: Option<Duration>,
    /// Whether the record is a step of a workflow (its retention starts with
    /// the workflow's).
    pub(crate) step: bool,
    /// When the record was created, on the store's clock.
    pub(crate) created_at: Timestamp,
}

impl Held {
    /// The claim on `record` (as the store wrote it), keeping its id.
    pub(crate) fn of(record: Record) -> Self {
        let lease = Self::lease_of(&record);
        Held {
            step: record.workflow.is_some(),
            created_at: record.created_at,
            id: record.id,
            status: record.status,
            token: record.token,
            lease,
        }
    }

    /// The claim on a record that stays in use.
    pub(crate) fn from_ref(record: &Record) -> Self {
        Held {
            id: record.id.clone(),
            status: record.status,
            token: record.token,
            lease: Self::lease_of(record),
            step: record.workflow.is_some(),
            created_at: record.created_at,
        }
    }

    /// The lease's length: as written, else the runtime's.
    pub(crate) fn lease_length(&self, rt: &Runtime) -> Duration {
        self.lease.unwrap_or(rt.inner.config.lease)
    }

    fn lease_of(r: &Record) -> Option<Duration> {
        r.lease_until.map(|until| {
            Duration::from_millis(until.as_millis().saturating_sub(r.updated_at.as_millis()))
        })
    }
}

/// Runs `fut` while renewing the lease of `held` every third of its length.
///
/// If the renewal finds the record taken over, renewing stops; the holder's
/// final write will then be refused (`Fenced`).
pub(crate) async fn heartbeat<F: Future>(rt: &Runtime, held: &Held, fut: F) -> F::Output {
    heartbeat_watched(rt, held, fut, None).await
}

/// Until when, on this process's clock, a holder may be sure it still holds
/// its lease: a lease it took or renewed lasts from the moment it asked. A
/// holder past it (its process stalled, its renewals failed) may have been
/// taken over, so it starts nothing new (a workflow, no new step).
#[derive(Debug)]
pub(crate) struct LeaseWatch(std::sync::Mutex<Instant>);

impl LeaseWatch {
    /// A lease of `lease` taken now.
    pub(crate) fn new(lease: Duration) -> Self {
        LeaseWatch(std::sync::Mutex::new(Instant::now() + lease))
    }

    fn renewed(&self, until: Instant) {
        let mut end = lock(&self.0);
        *end = (*end).max(until);
    }

    /// Whether the lease is sure to be held still.
    pub(crate) fn held(&self) -> bool {
        Instant::now() < *lock(&self.0)
    }
}

/// [`heartbeat`], telling `watch` of each renewal.
pub(crate) async fn heartbeat_watched<F: Future>(
    rt: &Runtime,
    held: &Held,
    fut: F,
    watch: Option<&LeaseWatch>,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    // Most bodies finish without waiting on anything: no timer for them, and
    // the renewal loop lives in a box so it does not weigh on every call's future.
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return out;
    }
    Box::pin(renew_while(rt, held, fut, watch)).await
}

async fn renew_while<F: Future>(
    rt: &Runtime,
    held: &Held,
    mut fut: Pin<&mut F>,
    watch: Option<&LeaseWatch>,
) -> F::Output {
    let lease = held.lease.unwrap_or(rt.inner.config.lease);
    let every = (lease / 3).max(Duration::from_millis(3));
    // A renewal in flight is polled beside the body, never in its way: a
    // store that is slow to answer must not stall the body (nor the next
    // renewal's timer, which starts once this one is answered).
    let mut renewal: Option<BoxFuture<'_, Result<Option<Timestamp>, StoreError>>> = None;
    let mut asked = Instant::now();
    let mut renewing = true;
    let tick = tokio::time::sleep(every);
    tokio::pin!(tick);
    loop {
        tokio::select! {
            biased;
            out = fut.as_mut() => return out,
            answer = poll_renewal(&mut renewal), if renewal.is_some() => {
                renewal = None;
                tick.as_mut().reset(Instant::now() + every);
                match answer {
                    Ok(Some(_)) => {
                        if let Some(watch) = watch {
                            watch.renewed(asked + lease);
                        }
                    }
                    Ok(None) => {
                        renewing = false;
                        tracing::warn!(id = %held.id, token = held.token, "lease lost to a newer holder");
                    }
                    Err(e) => tracing::warn!(id = %held.id, error = %e, "lease renewal failed; will try again"),
                }
            }
            () = tick.as_mut(), if renewing && renewal.is_none() => {
                asked = Instant::now();
                renewal = Some(rt.store().renew(&held.id, held.status, held.token, lease));
            }
        }
    }
}

/// The answer of the renewal in `slot` (which holds one).
async fn poll_renewal<'a>(
    slot: &mut Option<BoxFuture<'a, Result<Option<Timestamp>, StoreError>>>,
) -> Result<Option<Timestamp>, StoreError> {
    match slot {
        Some(renewal) => renewal.await,
        None => std::future::pending().await,
    }
}

/// The claim on a record, held while the body runs.
///
/// Dropping it without finishing (the caller's future was dropped) leaves the
/// record `Pending`: the lease decides what happens next.
#[derive(Debug)]
pub struct Guard<Op: Operation> {
    pub(crate) rt: Runtime,
    pub(crate) held: Held,
    span: tracing::Span,
    _op: PhantomData<fn() -> Op>,
}

impl<Op: Operation> Guard<Op> {
    fn new(rt: Runtime, record: Record, span: tracing::Span) -> Self {
        if record.workflow.is_some() {
            crate::workflow::note_claim(&record.id, record.token, true);
        }
        Guard {
            rt,
            held: Held::of(record),
            span,
            _op: PhantomData,
        }
    }

    /// The id of the claimed record.
    pub fn id(&self) -> &RecordId {
        &self.held.id
    }

    /// The fencing token the claim holds.
    pub fn token(&self) -> u64 {
        self.held.token
    }

    /// Runs the body once and records its outcome.
    pub async fn run<F>(self, body: F) -> Result<Op::Output, Op::Error>
    where
        F: Future<Output = Result<Op::Output, Op::Error>>,
    {
        bump(&self.rt.inner.counters.executions);
        let span = self.span.clone();
        let result = heartbeat(&self.rt, &self.held, body.instrument(span)).await;
        self.finish(result).await
    }

    /// Runs the body, and again up to `retry` more times with backoff while it fails
    /// with a retryable error (idempotent operations only), then records the
    /// outcome. The claim is held throughout.
    pub async fn run_retrying<F, Fut>(self, mut body: F) -> Result<Op::Output, Op::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Op::Output, Op::Error>>,
    {
        let retries = if Op::KIND == Kind::Idempotent {
            Op::OPTIONS.retry.unwrap_or(0)
        } else {
            0
        };
        let rt = &self.rt;
        let counters = &rt.inner.counters;
        let attempts = async {
            let mut run = 0;
            loop {
                bump(&counters.executions);
                let result = body().await;
                match &result {
                    Err(e) if run < retries && Op::classify(e).1 => {
                        run += 1;
                        bump(&counters.retries);
                        let delay = rt.inner.config.retry_backoff.delay(run);
                        tracing::debug!(attempt = run, ?delay, error = %e, "retrying");
                        tokio::time::sleep(delay).await;
                    }
                    _ => return result,
                }
            }
        };
        let result = heartbeat(rt, &self.held, attempts.instrument(self.span.clone())).await;
        self.finish(result).await
    }

    /// Feeds the probe's answer: `Ok(Some(output))` — the effect happened, record
    /// it and answer with it; `Ok(None)` — it did not, so run the body
    /// (`Ok(guard)`); `Err` — the probe failed, the record stays claimed until its
    /// lease runs out.
    pub async fn probed(
        self,
        found: Result<Option<Op::Output>, Op::Error>,
    ) -> Result<Self, Result<Op::Output, Op::Error>> {
        match found {
            Ok(None) => match crate::workflow::rolling_back() {
                // Recovery is rolling the workflow back: the effect never
                // happened, and it is not started now.
                Some(workflow) => {
                    let r = &self.held;
                    // A step: its retention starts with its workflow's.
                    let mut t =
                        Transition::new(r.id.clone(), Status::Pending, r.token, Status::Released);
                    t.error = Some("not started: the workflow is being rolled back".into());
                    let released = self.rt.write(&t).await;
                    Err(Err(self.error(match released {
                        Ok(()) => Error::RollbackRequested { workflow },
                        Err(e) => e,
                    })))
                }
                None => Ok(self),
            },
            Ok(Some(output)) => Err(self.finish(Ok(output)).await),
            Err(e) => Err(Err(e)),
        }
    }

    fn error(&self, e: Error) -> Op::Error {
        Op::Error::from_tempox(e)
    }

    /// Records the outcome. Borrows the guard, which its caller drops (waking
    /// local waiters) once the outcome is written: `run`'s future and this one
    /// then do not each carry a copy of it.
    pub(crate) async fn finish(
        &self,
        result: Result<Op::Output, Op::Error>,
    ) -> Result<Op::Output, Op::Error> {
        let r = &self.held;
        let mut t = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Completed);
        let retention = Op::OPTIONS
            .retention
            .unwrap_or(self.rt.inner.config.retention);
        // A step's retention starts when its workflow's does (invariant 9);
        // a workflow's, once its steps' has (a follow-up, due in case this
        // process dies first).
        let follow_up = Op::KIND == Kind::Workflow && !r.step;
        if follow_up {
            t.retry_after = Some(crate::recovery::follow_up_after(&self.rt));
        } else if !r.step {
            t.retention = Some(retention);
        }
        let output = match result {
            Ok(output) => match to_json(|buf| output.encode(buf)) {
                Ok(bytes) => {
                    t.output = Some(bytes);
                    Ok(output)
                }
                Err(e) => {
                    let e = codec(Op::NAME, "encode", "the output", e);
                    // An effect that cannot be recorded is not run again blindly.
                    t.to = if Op::KIND == Kind::Idempotent {
                        Status::Released
                    } else {
                        Status::OutcomeUnknown
                    };
                    t.error = Some(e.to_string());
                    Err(self.error(e))
                }
            },
            Err(e) => {
                let (outcome_unknown, _) = Op::classify(&e);
                t.error = Some(e.to_string());
                if outcome_unknown && Op::KIND == Kind::NonIdempotent {
                    // Invariant 8: handled like a crash. With a probe, end the lease
                    // now so the next call probes; without, park it.
                    if Op::OPTIONS.probe {
                        return self.expire_lease(e).await;
                    }
                    t.to = Status::OutcomeUnknown;
                    t.retention = None;
                    bump(&self.rt.inner.counters.dead_letters);
                } else if let Some(error_codec) = Op::ERROR_CODEC {
                    match (error_codec.encode)(&e) {
                        Ok(bytes) => {
                            t.to = Status::Failed;
                            t.output = Some(bytes.into());
                        }
                        Err(codec_error) => {
                            tracing::warn!(parent: &self.span, error = %codec_error, "cannot cache the error; releasing the key");
                            t.to = Status::Released;
                        }
                    }
                } else {
                    t.to = Status::Released;
                }
                if t.to == Status::Released {
                    // An outcome was recorded: a crash of a later run starts
                    // the count of recoveries again.
                    t.attempts = AttemptsChange::Set(0);
                }
                Err(e)
            }
        };
        if !t.to.is_final() {
            t.retention = None;
            t.retry_after = None;
        }
        if r.step {
            crate::workflow::note_claim(&r.id, r.token, false);
        }
        match self.rt.write(&t).await {
            Ok(()) if follow_up && t.to.is_final() => {
                let written = self.rt.store().get(&r.id).await;
                match written {
                    Ok(Some(wf)) if wf.token == r.token => {
                        if let Err(e) = self.rt.start_retention(&wf, retention).await {
                            tracing::warn!(parent: &self.span, error = %e, "could not start the retention of the steps; the reconciler will");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(parent: &self.span, error = %e, "could not start the retention of the steps; the reconciler will");
                    }
                }
                output
            }
            Ok(()) => output,
            Err(Error::Store { source }) => {
                // Invariant 4: the record stays pending; the lease hands it on.
                if let Err(e) = &output {
                    tracing::warn!(parent: &self.span, error = %e, "the body's error could not be recorded");
                }
                let e = Error::OutcomeNotRecorded {
                    op: Op::NAME.to_owned(),
                    key: r.id.key().to_owned(),
                    source,
                };
                crate::workflow::note_in_doubt(&e);
                Err(self.error(e))
            }
            Err(e) => {
                crate::workflow::note_in_doubt(&e);
                Err(self.error(e))
            }
        }
    }

    async fn expire_lease(&self, e: Op::Error) -> Result<Op::Output, Op::Error> {
        let r = &self.held;
        let mut t = Transition::new(r.id.clone(), Status::Pending, r.token, Status::Pending);
        t.lease = LeaseChange::Clear;
        t.error = Some(e.to_string());
        if let Err(store_error) = self.rt.write(&t).await {
            tracing::warn!(parent: &self.span, error = %store_error, "could not end the lease; it runs out on its own");
        }
        Err(e)
    }
}

impl<Op: Operation> Drop for Guard<Op> {
    fn drop(&mut self) {
        // Nobody in this process waits for any call: nothing to wake.
        if self
            .rt
            .inner
            .waiters
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            return;
        }
        let notify = lock(&self.rt.inner.running).remove(&self.held.id);
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_keys_differ_and_are_valid() {
        let a = unique_key();
        let b = unique_key();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 28);
    }
}
