//! The operation record: one per call, its statuses, and the one table of legal
//! transitions between them.
//!
//! ```text
//!             claim                 body Ok            (rollback / reconciler)
//!   (none) ─────────▶ Pending ─────────────▶ Completed ──────────────▶ Compensating ──▶ Compensated
//!                      │  │ body Err                                    ▲     │ fails N times
//!                      │  ├──▶ Released (key free again; the default)   │     ▼
//!                      │  └──▶ Failed   (error cached, replayed)        │   CompensationFailed (dead letter)
//!                      │ lease expired, outcome unknown                 │     │ retry ──┘   resolve ──▶ Resolved
//!                      └──▶ idempotent: claimed again (new token)       │
//!                          non-idempotent: probe ───────────────────────┘
//!                                          no probe ──▶ OutcomeUnknown (dead letter)
//! ```
//!
//! A workflow's own record moves `Pending → Completed`, or
//! `Pending → RollingBack → RolledBack | PartiallyRolledBack`. A call or
//! workflow whose holder died more often than the runtime allows is parked
//! `Pending → RecoveryFailed` (a dead letter). A record may also keep its
//! status while it is rescheduled (`retry_after`) or, once final, while its
//! retention starts.
//!
//! Stores never decide a status on their own: [`plan_claim`] and
//! [`plan_transition`] are the whole state machine, and every backend either
//! calls them (memory, SQLite) or mirrors them in a script checked by the same
//! conformance suite (Redis).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};

/// Immutable bytes shared by every copy of a record (arguments, outputs):
/// cloning is a reference count, never a copy.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Blob(Arc<[u8]>);

impl Blob {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(v.into())
    }
}

impl From<&[u8]> for Blob {
    fn from(v: &[u8]) -> Self {
        Blob(v.into())
    }
}

impl fmt::Debug for Blob {
    /// As text when it is UTF-8 (JSON, mostly), else as bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) => write!(f, "{text:?}"),
            Err(_) => write!(f, "{:?}", &self.0),
        }
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Blob::from)
    }
}

/// Milliseconds since the Unix epoch, on the store's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This process's wall clock.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T09:30:00.125Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
        let rem = secs % 86_400;
        // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

/// What kind of operation a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `#[idempotent]`: safe to run again.
    Idempotent,
    /// `#[non_idempotent]`: every run is a new effect; never run again automatically.
    NonIdempotent,
    /// `#[workflow]`: a sequence of steps, rolled back on failure.
    Workflow,
}

impl Kind {
    /// The name used in records and output: `idempotent`, `non_idempotent`, `workflow`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Idempotent => "idempotent",
            Kind::NonIdempotent => "non_idempotent",
            Kind::Workflow => "workflow",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Kind::Idempotent, Kind::NonIdempotent, Kind::Workflow]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown kind `{s}`"))
    }
}

macro_rules! statuses {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Where a record is in its life; see the [module docs](self) for the diagram.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Status {
            $($(#[$doc])* $variant,)*
        }

        impl Status {
            /// Every status, in declaration order.
            pub const ALL: &'static [Status] = &[$(Status::$variant,)*];

            /// The name used in stores and output, e.g. `compensation_failed`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Status::$variant => $name,)* }
            }
        }
    };
}

statuses! {
    /// Claimed: the body is running (or its holder died and the lease decides).
    Pending = "pending",
    /// The body returned `Ok`; the output is recorded and replayed.
    Completed = "completed",
    /// The body returned `Err` and the operation caches errors: the error is replayed.
    Failed = "failed",
    /// The body returned `Err` and the key was released: the next call runs again.
    Released = "released",
    /// The compensation is claimed (leased) or scheduled to be retried.
    Compensating = "compensating",
    /// The compensation succeeded.
    Compensated = "compensated",
    /// Dead letter: the compensation kept failing.
    CompensationFailed = "compensation_failed",
    /// Dead letter: a non-idempotent effect may or may not have happened.
    OutcomeUnknown = "outcome_unknown",
    /// Dead letter: the call (or workflow) was recovered as often as the
    /// runtime allows and its holder died every time (a crash loop).
    RecoveryFailed = "recovery_failed",
    /// An operator closed the record by hand.
    Resolved = "resolved",
    /// A workflow is undoing its completed steps.
    RollingBack = "rolling_back",
    /// A workflow undid every completed step.
    RolledBack = "rolled_back",
    /// A workflow's rollback stopped at a dead-lettered compensation.
    PartiallyRolledBack = "partially_rolled_back",
}

impl Status {
    /// Dead letters: parked for an operator, never removed by retention.
    pub const DEAD_LETTERS: &'static [Status] = &[
        Status::CompensationFailed,
        Status::OutcomeUnknown,
        Status::RecoveryFailed,
    ];

    /// Whether nothing automatic will ever change this record again, so retention
    /// may remove it.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed
                | Status::Failed
                | Status::Released
                | Status::Compensated
                | Status::Resolved
                | Status::RolledBack
        )
    }

    /// Whether this status parks the record for an operator.
    pub const fn is_dead_letter(self) -> bool {
        matches!(
            self,
            Status::CompensationFailed | Status::OutcomeUnknown | Status::RecoveryFailed
        )
    }

    /// Whether a record in this status holds a lease while someone works on it.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            Status::Pending | Status::Compensating | Status::RollingBack
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status `{s}`; expected one of {}", names.join(", "))
            })
    }
}

/// The legal transitions, `(from, to)`. This table is the state machine: stores
/// refuse anything not listed here.
pub const TRANSITIONS: &[(Status, Status)] = {
    use Status::*;
    &[
        // A body's outcome.
        (Pending, Completed),
        (Pending, Failed),
        (Pending, Released),
        // A lease expired on a non-idempotent call (no probe), or its error said
        // the outcome is unknown.
        (Pending, OutcomeUnknown),
        // A lease expired: claimed again with a new token (idempotent, or probing).
        (Pending, Pending),
        // A released key claimed again.
        (Released, Pending),
        // Compensation: claimed, retried, taken over, finished, parked.
        (Completed, Compensating),
        (Compensating, Compensating),
        (Compensating, Compensated),
        (Compensating, CompensationFailed),
        // A reconciler acknowledges a dead letter's alert (with a new token, so
        // of several reconcilers exactly one wins).
        (CompensationFailed, CompensationFailed),
        (OutcomeUnknown, OutcomeUnknown),
        (RecoveryFailed, RecoveryFailed),
        // A crash loop: recovered as often as allowed, parked (invariant 10).
        (Pending, RecoveryFailed),
        // Operator actions on dead letters.
        (CompensationFailed, Compensating),
        (CompensationFailed, Resolved),
        (OutcomeUnknown, Resolved),
        (RecoveryFailed, Resolved),
        // Operator retry of a crash loop: run again (a workflow, recovered
        // by the reconciler) or free the key (the next call runs it).
        (RecoveryFailed, Pending),
        (RecoveryFailed, Released),
        // A probe (reconciler or operator retry) learned what happened.
        (OutcomeUnknown, Completed),
        (OutcomeUnknown, Released),
        // Workflows. A completed workflow that is a step of another is rolled
        // back when the outer one is.
        (Pending, RollingBack),
        (Completed, RollingBack),
        (Pending, RolledBack),
        (RollingBack, RollingBack),
        (RollingBack, RolledBack),
        (RollingBack, PartiallyRolledBack),
        (PartiallyRolledBack, RollingBack),
        (PartiallyRolledBack, Resolved),
        // A stopped rollback looked at again later (rescheduled).
        (PartiallyRolledBack, PartiallyRolledBack),
        // A final record keeps its status while its retention starts (the
        // steps of a workflow that just ended) or its follow-up is done.
        (Completed, Completed),
        (Failed, Failed),
        (Released, Released),
        (Compensated, Compensated),
        (Resolved, Resolved),
        (RolledBack, RolledBack),
    ]
};

/// Whether `from → to` is in [`TRANSITIONS`].
pub fn is_legal(from: Status, to: Status) -> bool {
    TRANSITIONS.iter().any(|&(f, t)| f == from && t == to)
}

/// A record's identity: its operation's name and its key, written `op/key`.
///
/// Operation names never contain `/`, so the first `/` splits the two.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(Arc<str>);

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RecordId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl RecordId {
    /// The id of `op`'s record for `key`.
    pub fn new(op: &str, key: &Key) -> Self {
        Self::from_parts(op, key.as_str())
    }

    /// `op/key` from a key already known to be valid.
    pub(crate) fn from_parts(op: &str, key: &str) -> Self {
        thread_local! {
            static JOINED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let join = |s: &mut String| {
            s.clear();
            s.push_str(op);
            s.push('/');
            s.push_str(key);
        };
        // Joined in a buffer reused by this thread, so the id costs one
        // allocation (and, pushed as `str`s, is not checked for UTF-8 again).
        JOINED
            .try_with(|buf| {
                let mut buf = buf.try_borrow_mut().ok()?;
                join(&mut buf);
                let id = RecordId(Arc::from(buf.as_str()));
                if buf.capacity() > 4096 {
                    *buf = String::new();
                }
                Some(id)
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let mut s = String::with_capacity(op.len() + 1 + key.len());
                join(&mut s);
                RecordId(s.into())
            })
    }

    /// Parses `op/key`, as printed by the CLI.
    ///
    /// # Errors
    /// When there is no `/`, the operation name is empty, or the key is malformed.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((op, key)) = s.split_once('/') else {
            return Err(format!(
                "`{s}` is not a record id: expected `<operation>/<key>`"
            ));
        };
        if op.is_empty() {
            return Err(format!(
                "`{s}` is not a record id: the operation name is empty"
            ));
        }
        Key::new(key).map_err(|e| format!("`{s}` is not a record id: {e}"))?;
        Ok(RecordId(s.into()))
    }

    /// The operation's name.
    pub fn op(&self) -> &str {
        self.0.split_once('/').map_or(&*self.0, |(op, _)| op)
    }

    /// The key.
    pub fn key(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, key)| key)
    }

    /// The whole id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One operation call, as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `op/key`: the operation's stable name and the idempotency key.
    pub id: RecordId,
    /// Idempotent, non-idempotent or workflow.
    pub kind: Kind,
    /// Hash of all arguments (see [`Fingerprint`]).
    pub fingerprint: Fingerprint,
    /// The arguments, as JSON.
    pub input: Blob,
    /// The output as JSON once completed (for `Failed`, the cached error).
    pub output: Option<Blob>,
    /// The last error's message.
    pub error: Option<String>,
    /// Where the record is in its life.
    pub status: Status,
    /// Fencing token of the current holder; strictly increases on every claim.
    pub token: u64,
    /// Until when the current holder may work on it.
    pub lease_until: Option<Timestamp>,
    /// Claims of the body, or runs of the compensation while compensating.
    pub attempts: u32,
    /// The workflow this record is a step of.
    pub workflow: Option<RecordId>,
    /// Its step number in that workflow.
    pub step: Option<u32>,
    /// When the record was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When the reconciler should look at it next (lease expiry or retry backoff).
    pub due_at: Option<Timestamp>,
    /// When retention may remove it (final statuses only).
    pub expires_at: Option<Timestamp>,
    /// Operator notes, newest last.
    pub note: Option<String>,
}

impl Record {
    /// The operation's stable name.
    pub fn op(&self) -> &str {
        self.id.op()
    }

    /// The idempotency key.
    pub fn key(&self) -> &str {
        self.id.key()
    }

    /// Whether another holder may take the record over now: active with its lease
    /// run out.
    pub fn lease_expired(&self, now: Timestamp) -> bool {
        self.status.is_active() && self.lease_until.is_none_or(|until| until <= now)
    }

    /// Whether retention has passed for this (final) record.
    pub fn retention_passed(&self, now: Timestamp) -> bool {
        self.status.is_final() && self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What a store does with a `Pending` record whose lease has expired, when a new
/// claim for its key arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpired {
    /// Take it over with a new token and run (idempotent), or probe (non-idempotent
    /// with a `probe`).
    TakeOver,
    /// Park it as `OutcomeUnknown` (non-idempotent without a probe).
    MarkUnknown,
}

/// A request to claim a key (write-ahead: the body runs only after this is durable).
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// `op/key`.
    pub id: RecordId,
    /// The operation's kind.
    pub kind: Kind,
    /// The arguments' fingerprint.
    pub fingerprint: Fingerprint,
    /// The arguments as JSON.
    pub input: Blob,
    /// How long the claim holds before someone else may take over.
    pub lease: Duration,
    /// What to do with an expired `Pending` record.
    pub on_expired: OnExpired,
    /// The workflow the call is a step of.
    pub workflow: Option<RecordId>,
    /// Its step number.
    pub step: Option<u32>,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The caller holds the record (`Pending`, with a new token): run the body.
    /// `previous` is `None` for a new record, `Some(Released)` after a released
    /// error, `Some(Pending)` after taking over an expired lease.
    Acquired {
        /// The record as written.
        record: Record,
        /// The status it had before, if it existed.
        previous: Option<Status>,
    },
    /// The record exists and was not changed; the caller decides from its status and
    /// fingerprint (replay, wait, `KeyReuse`, closed).
    Existing(Record),
    /// An expired non-idempotent claim was just parked as `OutcomeUnknown` by this
    /// request.
    MarkedUnknown(Record),
}

/// How a transition treats the lease and token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseChange {
    /// Leave lease and token as they are.
    Keep,
    /// Drop the lease (the record is no longer being worked on).
    Clear,
    /// Take a new lease with a new token: the caller becomes the holder.
    Acquire(Duration),
}

/// How a transition treats the attempt count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptsChange {
    /// Leave it.
    Keep,
    /// Add one.
    Increment,
    /// Set it (e.g. to zero for an operator retry).
    Set(u32),
}

/// A compare-and-set on `(status, token)`: applied only if the record is in
/// `from` with `token`.
#[derive(Clone, Debug)]
pub struct Transition {
    /// The record.
    pub id: RecordId,
    /// The status the caller believes the record has.
    pub from: Status,
    /// The token the caller holds.
    pub token: u64,
    /// The new status; `(from, to)` must be in [`TRANSITIONS`].
    pub to: Status,
    /// Output to record (`None` keeps the current one).
    pub output: Option<Blob>,
    /// Error message to record (`None` keeps the current one).
    pub error: Option<String>,
    /// Lease and token handling.
    pub lease: LeaseChange,
    /// When the reconciler should look at the record again (backoff); below
    /// a millisecond it counts as none. For an active `to` it overrides the
    /// end of the lease (a record rescheduled while nobody holds it). On a
    /// dead letter's own status (`from == to`) its alert is claimed and due
    /// again after this unless acknowledged (the same transition without
    /// it). On any other status it keeps the record due: a stopped rollback
    /// to look at again, or a final workflow with a follow-up left.
    pub retry_after: Option<Duration>,
    /// For a final `to`: how long to retain the record.
    pub retention: Option<Duration>,
    /// Attempt count handling.
    pub attempts: AttemptsChange,
    /// A note to append (operator actions).
    pub note: Option<String>,
    /// Applied only if the record's lease has run out on the store's clock
    /// at the moment it is written (a record without a lease counts as run
    /// out): how a takeover makes sure that a holder who renewed late, after
    /// the caller read the record, keeps its claim (invariant 12).
    pub if_lease_expired: bool,
}

impl Transition {
    /// A transition that changes only the status.
    pub fn new(id: RecordId, from: Status, token: u64, to: Status) -> Self {
        Transition {
            id,
            from,
            token,
            to,
            output: None,
            error: None,
            lease: LeaseChange::Clear,
            retry_after: None,
            retention: None,
            attempts: AttemptsChange::Keep,
            note: None,
            if_lease_expired: false,
        }
    }
}

/// What a transition did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transitioned {
    /// Applied; the record as written.
    Applied(Record),
    /// Not applied: the record is gone or not in `(from, token)`. The current
    /// record, if any, tells the caller who won.
    Conflict(Option<Record>),
}

/// A fencing token newer than `previous` and, so that a record removed by
/// retention and created again never reuses a token, than any token issued
/// before `now`.
pub fn next_token(previous: Option<u64>, now: Timestamp) -> u64 {
    let floor = now.as_millis().saturating_mul(1000);
    previous.map_or(floor, |p| p.saturating_add(1).max(floor))
}

/// The claim rules, as a pure function of the current record: what to write
/// (if anything) and what to answer.
///
/// Stores call this inside their atomic section; `None` for `existing` means no
/// record (a record past its retention counts as none).
pub fn plan_claim(existing: Option<&Record>, req: &ClaimRequest, now: Timestamp) -> Claimed {
    let existing = existing.filter(|r| !r.retention_passed(now));
    let fresh = |previous: Option<&Record>| {
        let token = next_token(previous.map(|r| r.token), now);
        let lease_until = now.plus(req.lease);
        Record {
            id: req.id.clone(),
            kind: req.kind,
            fingerprint: req.fingerprint,
            input: req.input.clone(),
            output: None,
            error: previous.and_then(|r| r.error.clone()),
            status: Status::Pending,
            token,
            lease_until: Some(lease_until),
            attempts: previous.map_or(1, |r| r.attempts.saturating_add(1)),
            workflow: req.workflow.clone(),
            step: req.step,
            created_at: previous.map_or(now, |r| r.created_at),
            updated_at: now,
            due_at: Some(lease_until),
            expires_at: None,
            note: previous.and_then(|r| r.note.clone()),
        }
    };
    match existing {
        None => Claimed::Acquired {
            record: fresh(None),
            previous: None,
        },
        // A released key is free for any request (invariant 8).
        Some(r) if r.status == Status::Released => Claimed::Acquired {
            record: fresh(Some(r)),
            previous: Some(Status::Released),
        },
        // Invariant 2: an expired claim is only taken over by the same request.
        Some(r)
            if r.status == Status::Pending
                && r.lease_expired(now)
                && r.fingerprint == req.fingerprint =>
        {
            match req.on_expired {
                OnExpired::TakeOver => Claimed::Acquired {
                    record: fresh(Some(r)),
                    previous: Some(Status::Pending),
                },
                OnExpired::MarkUnknown => {
                    let mut record = r.clone();
                    record.status = Status::OutcomeUnknown;
                    record.lease_until = None;
                    // Due at once: the reconciler raises the alert for it.
                    record.due_at = Some(now);
                    record.updated_at = now;
                    record.error = Some("lease expired before the outcome was recorded".into());
                    Claimed::MarkedUnknown(record)
                }
            }
        }
        Some(r) => Claimed::Existing(r.clone()),
    }
}

/// The transition rules, as a pure function: the record to write, or `Conflict`.
///
/// # Errors
/// An illegal `(from, to)` pair is a [`StoreError`] of kind `Invalid`: it is a bug
/// in the caller, not a race.
pub fn plan_transition(
    existing: Option<&Record>,
    t: &Transition,
    now: Timestamp,
) -> Result<Transitioned, StoreError> {
    check_legal(t)?;
    let Some(current) = existing else {
        return Ok(Transitioned::Conflict(None));
    };
    if !holds(current, t, now) {
        return Ok(Transitioned::Conflict(Some(current.clone())));
    }
    let mut r = current.clone();
    apply_transition(&mut r, t, now);
    Ok(Transitioned::Applied(r))
}

/// [`plan_transition`]'s first check: `(t.from, t.to)` is in [`TRANSITIONS`].
pub(crate) fn check_legal(t: &Transition) -> Result<(), StoreError> {
    if is_legal(t.from, t.to) {
        Ok(())
    } else {
        Err(StoreError::invalid(format!(
            "illegal transition {} -> {} for `{}`",
            t.from, t.to, t.id
        )))
    }
}

/// Invariant 3 (fencing): only the holder of the current token in the expected
/// status may write; and a takeover only while the lease has run out at `now`
/// (invariant 12).
pub(crate) fn holds(current: &Record, t: &Transition, now: Timestamp) -> bool {
    current.status == t.from
        && current.token == t.token
        && (!t.if_lease_expired || current.lease_until.is_none_or(|until| until <= now))
}

/// Writes `t` into `r`, which passed [`check_legal`] and [`holds`]: the rest of
/// [`plan_transition`]. Nothing in it can panic (saturating arithmetic, clones
/// and moves), so a store may apply it in place under its lock.
pub(crate) fn apply_transition(r: &mut Record, t: &Transition, now: Timestamp) {
    r.status = t.to;
    r.updated_at = now;
    if let Some(output) = &t.output {
        r.output = Some(output.clone());
    }
    if let Some(error) = &t.error {
        r.error = Some(error.clone());
    }
    let s = schedule(t, r.token, r.lease_until, now);
    r.token = s.token;
    r.lease_until = s.lease_until;
    r.due_at = s.due_at;
    r.expires_at = s.expires_at;
    match t.attempts {
        AttemptsChange::Keep => {}
        AttemptsChange::Increment => r.attempts = r.attempts.saturating_add(1),
        AttemptsChange::Set(n) => r.attempts = n,
    }
    if let Some(note) = &t.note {
        r.note = Some(match r.note.take() {
            Some(old) => format!("{old}\n{note}"),
            None => note.clone(),
        });
    }
}

/// The token, lease and times a record has after `t` (part of
/// [`apply_transition`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) token: u64,
    pub(crate) lease_until: Option<Timestamp>,
    pub(crate) due_at: Option<Timestamp>,
    pub(crate) expires_at: Option<Timestamp>,
}

/// The [`Schedule`] after `t` of a record holding `token` and `lease_until`.
/// Only a [`LeaseChange::Keep`] reads `lease_until`: with any other change a
/// store may compute the result from `t` alone (its token is `t.token`).
pub(crate) fn schedule(
    t: &Transition,
    token: u64,
    lease_until: Option<Timestamp>,
    now: Timestamp,
) -> Schedule {
    let (token, lease_until) = match t.lease {
        LeaseChange::Keep => (token, lease_until),
        LeaseChange::Clear => (token, None),
        LeaseChange::Acquire(lease) => (next_token(Some(token), now), Some(now.plus(lease))),
    };
    let lease_until = if t.to.is_active() { lease_until } else { None };
    // A `retry_after` under a millisecond is none: the stores count in them.
    let again = t
        .retry_after
        .filter(|d| d.as_millis() > 0)
        .map(|d| now.plus(d));
    let due_at = if t.to.is_active() {
        // Looked at again after `retry_after` (a reconciler rescheduling a
        // record it could not settle yet), else when the lease runs out.
        again.or(lease_until).or(Some(now))
    } else if t.to.is_dead_letter() && t.from != t.to {
        // Entering a dead letter: due at once, so a reconciler raises its alert.
        Some(now)
    } else {
        // A dead letter's own status (`from == to`): with a `retry_after` its
        // alert is claimed and due again after it unless acknowledged;
        // without, the alert is acknowledged. A stopped rollback is looked at
        // again after it; a final record with one has a follow-up left (a
        // workflow whose steps' retention is yet to start).
        again
    };
    let expires_at = if t.to.is_final() {
        t.retention.map(|d| now.plus(d))
    } else {
        None
    };
    Schedule {
        token,
        lease_until,
        due_at,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_formats_as_rfc3339() {
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_795_000_000_123).to_string(),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn status_names_round_trip() {
        for &s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn a_dead_letters_alert_is_claimed_with_a_retry_after_and_acknowledged_without() {
        let now = Timestamp::from_millis(10_000);
        let parked = Record {
            id: RecordId::from_parts("t.op", "k"),
            kind: Kind::NonIdempotent,
            fingerprint: crate::key::Fingerprint::from_bytes([0; 16]),
            input: Blob::default(),
            output: None,
            error: Some("lost".into()),
            status: Status::OutcomeUnknown,
            token: 7,
            lease_until: None,
            attempts: 1,
            workflow: None,
            step: None,
            created_at: now,
            updated_at: now,
            due_at: Some(now),
            expires_at: None,
            note: None,
        };
        let due_after = |retry_after: Option<Duration>| {
            let mut t = Transition::new(parked.id.clone(), parked.status, 7, parked.status);
            t.lease = LeaseChange::Acquire(Duration::from_secs(30));
            t.retry_after = retry_after;
            match plan_transition(Some(&parked), &t, now) {
                Ok(Transitioned::Applied(r)) => {
                    assert!(r.token > parked.token);
                    assert_eq!((r.status, r.lease_until), (parked.status, None));
                    r.due_at
                }
                other => panic!("not applied: {other:?}"),
            }
        };
        assert_eq!(
            due_after(Some(Duration::from_secs(30))),
            Some(now.plus(Duration::from_secs(30))),
            "claimed: due again after the lease"
        );
        // Below a millisecond is nothing to the stores that count in them.
        for none in [None, Some(Duration::ZERO), Some(Duration::from_micros(900))] {
            assert_eq!(due_after(none), None, "acknowledged ({none:?})");
        }
    }

    #[test]
    fn dead_letters_are_never_final() {
        for &s in Status::ALL {
            assert!(!(s.is_final() && s.is_dead_letter()), "{s}");
            assert!(!(s.is_final() && s.is_active()), "{s}");
        }
    }

    #[test]
    fn record_id_splits_at_the_first_slash() {
        let key = Key::new("a/b").unwrap_or_else(|e| panic!("{e}"));
        let id = RecordId::new("shop::charge", &key);
        assert_eq!(id.as_str(), "shop::charge/a/b");
        assert_eq!(id.op(), "shop::charge");
        assert_eq!(id.key(), "a/b");
        assert_eq!(RecordId::parse("shop::charge/a/b"), Ok(id));
        assert!(RecordId::parse("nokey").is_err());
        assert!(RecordId::parse("/k").is_err());
        assert!(RecordId::parse("op/").is_err());
        // The buffer ids are joined in is reused: nothing of a longer id stays.
        let long = "k".repeat(Key::MAX_LEN);
        assert_eq!(
            RecordId::from_parts("op", &long).as_str(),
            format!("op/{long}")
        );
        assert_eq!(RecordId::from_parts("b", "c").as_str(), "b/c");
    }

    #[test]
    fn tokens_increase_across_removal() {
        let t1 = next_token(None, Timestamp::from_millis(10));
        let t2 = next_token(Some(t1), Timestamp::from_millis(10));
        assert!(t2 > t1);
        // Created again later, after retention removed it: still newer.
        let t3 = next_token(None, Timestamp::from_millis(11));
        assert!(t3 > t2);
    }
}
