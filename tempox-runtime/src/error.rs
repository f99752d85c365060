//! The errors tempox reports.
//!
//! [`Error`] is what the runtime hands back to a caller, always through the
//! annotated function's own error type (`E: From<tempox::Error>`). Failures of a
//! store are described by [`StoreError`], which classifies itself so callers can
//! tell a passing outage from a final problem.

use std::fmt;
use std::time::Duration;

use crate::catalog::Location;
use crate::key::KeyError;
use crate::record::Status;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the tempox runtime can report.
///
/// Every variant carries the operation's name and, where there is one, its key,
/// so a log line alone says which call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key was used before with different arguments (invariant 2). The first
    /// call's result is never handed to a different request; over HTTP this is a 422.
    #[error("key `{key}` of `{op}` was already used with different arguments")]
    KeyReuse {
        /// The operation's name.
        op: String,
        /// The reused key.
        key: String,
    },

    /// Another call with this key is running, and this call did not wait for it
    /// (`in_flight = reject`) or waited as long as it may (`in_flight = wait`).
    #[error("`{op}` with key `{key}` is already running")]
    InFlight {
        /// The operation's name.
        op: String,
        /// The key in flight.
        key: String,
    },

    /// This caller's lease expired and another caller took the record over, so
    /// this caller may no longer write it (invariant 3).
    #[error("`{op}` with key `{key}` was taken over by a newer holder (token {token} is stale)")]
    Fenced {
        /// The operation's name.
        op: String,
        /// The key.
        key: String,
        /// The stale fencing token this caller held.
        token: u64,
    },

    /// A non-idempotent call may or may not have taken effect, and nothing can tell
    /// which (no `probe`). The record is parked for an operator.
    #[error(
        "`{op}` with key `{key}` may or may not have taken effect; it is parked as `outcome_unknown` for an operator"
    )]
    OutcomeUnknown {
        /// The operation's name.
        op: String,
        /// The key.
        key: String,
    },

    /// The body ran, but its outcome could not be written (invariant 4). The record
    /// stays `pending` and the reconciler takes it over when its lease expires.
    #[error(
        "`{op}` with key `{key}` ran, but its outcome could not be recorded; the record stays pending and will be reconciled"
    )]
    OutcomeNotRecorded {
        /// The operation's name.
        op: String,
        /// The key.
        key: String,
        /// Why the write failed.
        #[source]
        source: StoreError,
    },

    /// An annotated function was called with no runtime in scope: neither inside
    /// [`Runtime::scope`](crate::Runtime::scope) nor after
    /// [`Runtime::install_global`](crate::Runtime::install_global).
    #[error(
        "`{op}` was called with no tempox runtime in scope; call it inside `Runtime::scope` or after `Runtime::install_global`"
    )]
    NoRuntime {
        /// The operation's name.
        op: String,
    },

    /// A workflow, run again, called a different operation at a step than its record
    /// holds: its code or its inputs changed between runs.
    #[error(
        "workflow `{workflow}` is not deterministic: step {step} was `{recorded}` and is now `{called}`"
    )]
    NonDeterministic {
        /// The workflow's record id.
        workflow: String,
        /// The step number.
        step: u32,
        /// The operation the record holds for this step.
        recorded: String,
        /// The operation called now.
        called: String,
    },

    /// A workflow did not complete within its `deadline`: it is rolled back
    /// (by the process running it, or by recovery).
    #[error("workflow `{workflow}` did not complete within its deadline of {}; it is rolled back", Human(*deadline))]
    DeadlineExceeded {
        /// The workflow's record id.
        workflow: String,
        /// The deadline, from the workflow's start.
        deadline: Duration,
    },

    /// A workflow is being rolled back during recovery: steps that never ran are
    /// not started.
    #[error("workflow `{workflow}` is being rolled back; no new step is started")]
    RollbackRequested {
        /// The workflow's record id.
        workflow: String,
    },

    /// The store failed; see [`StoreError`] for whether trying again can help.
    /// Shown as the store's own message.
    #[error(transparent)]
    Store {
        /// The store's failure.
        source: StoreError,
    },

    /// A value could not be encoded or decoded (arguments, output, a cached error).
    #[error("cannot {action} {what} of `{op}`: {message}")]
    Codec {
        /// The operation's name.
        op: String,
        /// `"encode"` or `"decode"`.
        action: &'static str,
        /// What: `"the arguments"`, `"the output"`, `"the error"`.
        what: &'static str,
        /// The codec's message.
        message: String,
    },

    /// The key is malformed: empty, over 512 bytes or with control characters.
    #[error("invalid key for `{op}`: {reason}")]
    InvalidKey {
        /// The operation's name (the message carries the reason's words, so
        /// it is not this error's `source()` too).
        op: String,
        /// What is wrong with it.
        reason: KeyError,
    },

    /// The record for this key is closed: it was compensated, parked, or resolved by
    /// an operator, so it can neither replay an output nor run again.
    #[error(
        "`{op}` with key `{key}` is {status}{} and can neither replay nor run again; use a new key",
        recorded(.error.as_deref())
    )]
    Closed {
        /// The operation's name.
        op: String,
        /// The key.
        key: String,
        /// The record's status.
        status: Status,
        /// The error recorded with it, if any (e.g. why a workflow rolled back).
        error: Option<String>,
    },

    /// Two operations were registered under one name.
    #[error(
        "two operations are named `{name}`: {first} and {second}; give one of them `name = \"...\"`"
    )]
    DuplicateOperation {
        /// The shared name.
        name: String,
        /// Where the first is defined.
        first: Location,
        /// Where the second is defined.
        second: Location,
    },

    /// A setting is invalid (builder, operator request, global runtime).
    #[error("invalid setting `{setting}`: {message}")]
    Config {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },

    /// No record has this id.
    #[error("no record `{id}`")]
    NotFound {
        /// The id looked up.
        id: String,
    },

    /// The record is not in a status the requested action applies to.
    #[error("cannot {action} `{id}`: it is {status}")]
    WrongStatus {
        /// The action requested.
        action: &'static str,
        /// The record's id.
        id: String,
        /// Its current status.
        status: Status,
    },

    /// A compensation ran and failed.
    #[error("compensation `{compensation}` of `{op}` failed: {message}")]
    Compensation {
        /// The compensated operation.
        op: String,
        /// The compensation's name.
        compensation: String,
        /// Its error.
        message: String,
    },
}

impl From<StoreError> for Error {
    fn from(source: StoreError) -> Self {
        Error::Store { source }
    }
}

impl Error {
    /// Whether calling again later may succeed: store outages, `InFlight`, `Fenced`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InFlight { .. } | Error::Fenced { .. } => true,
            Error::Store { source } | Error::OutcomeNotRecorded { source, .. } => {
                source.is_retryable()
            }
            _ => false,
        }
    }
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store cannot be reached (connection refused or dropped). A write sent
    /// before the connection dropped may or may not have happened.
    Unavailable,
    /// The store did not answer in time; the request may or may not have happened.
    Timeout,
    /// A stored record cannot be read back: corrupt or written by something else.
    Corrupt,
    /// The store's schema is newer than this version of tempox, or not tempox's.
    Schema,
    /// The request is not valid for the store (an illegal transition, a bad
    /// id), or the store's settings cannot work (a malformed URL, refused
    /// credentials).
    Invalid,
    /// Anything else the backend reported.
    Other,
}

/// A failure of a [`Store`](crate::store::Store).
///
/// Its message is whole: what failed, with the backend's own words when it
/// has them. The backend's error is kept for inspection ([`backend`]) but is
/// not this error's `source()`, so a printer of error chains does not show
/// the same words twice.
///
/// [`backend`]: StoreError::backend
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    backend: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// A new error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            backend: None,
        }
    }

    /// Keeps the backend's own error (a `rusqlite::Error`, a
    /// `redis::RedisError`, ...), whose words the message already carries.
    pub fn with_backend(mut self, backend: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.backend = Some(Box::new(backend));
        self
    }

    /// The backend's own error, when the store kept it: to tell its cases
    /// apart by downcasting.
    ///
    /// ```
    /// use std::io::{Error, ErrorKind};
    /// use tempox_runtime::{StoreError, StoreErrorKind};
    ///
    /// let io = Error::from(ErrorKind::PermissionDenied);
    /// let e = StoreError::new(StoreErrorKind::Unavailable, format!("cannot open records.db: {io}"))
    ///     .with_backend(io);
    /// let kept = e.backend().and_then(|b| b.downcast_ref::<Error>());
    /// assert_eq!(kept.map(Error::kind), Some(ErrorKind::PermissionDenied));
    /// // Its words are in the message, not again in the chain.
    /// assert!(std::error::Error::source(&e).is_none());
    /// ```
    pub fn backend(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.backend.as_deref()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The message (what `Display` shows).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The store could not be reached.
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }

    /// The store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == StoreErrorKind::Timeout
    }

    /// Whether the same request may succeed later (outages and timeouts).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        StoreError::new(StoreErrorKind::Invalid, message)
    }

    /// The same error, its message followed by `; <hint>`.
    #[cfg_attr(not(feature = "redis-tls"), allow(dead_code))]
    pub(crate) fn with_hint(mut self, hint: &str) -> Self {
        self.message.push_str("; ");
        self.message.push_str(hint);
        self
    }
}

/// A duration written for humans in error messages: `250ms`, `30s`, `2h`.
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

/// ` (error: …)` for a record's error in a message, or nothing. Only the
/// first line, at most 200 characters: records keep whole reports.
fn recorded(error: Option<&str>) -> String {
    match error.and_then(|e| e.lines().next()).map(str::trim) {
        Some(line) if !line.is_empty() => {
            let mut shown: String = line.chars().take(200).collect();
            if shown.len() < line.len() {
                shown.push('…');
            }
            format!(" (error: {shown})")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_key_says_what_was_recorded_in_one_short_line() {
        let closed = |error: Option<&str>| {
            Error::Closed {
                op: "shop.checkout".into(),
                key: "order-3".into(),
                status: Status::RolledBack,
                error: error.map(str::to_owned),
            }
            .to_string()
        };
        assert_eq!(
            closed(None),
            "`shop.checkout` with key `order-3` is rolled_back and can neither replay nor run \
             again; use a new key"
        );
        assert_eq!(
            closed(Some("card declined\nat line 3")),
            "`shop.checkout` with key `order-3` is rolled_back (error: card declined) and can \
             neither replay nor run again; use a new key"
        );
        assert_eq!(closed(Some("  \n")), closed(None));
        let long = closed(Some(&"é".repeat(300)));
        assert!(
            long.contains(&format!("(error: {}…)", "é".repeat(200))),
            "{long}"
        );
    }
}
