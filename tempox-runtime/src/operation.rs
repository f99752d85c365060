//! What the attribute macros generate code against.
//!
//! Each annotated function gets a hidden companion struct of the same name that
//! implements [`Operation`]. The traits here carry the compile-time rules of the
//! macros: each has a `#[diagnostic::on_unimplemented]` message that says what to
//! write instead, and the macros place the bound on the user's own tokens.

use std::fmt::Display;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::future::Future;

use crate::error::Error;
use crate::key::{Key, KeyError};
use crate::record::Kind;

/// What a duplicate call does while the first call with its key is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlight {
    /// Wait (bounded by the runtime's `in_flight_wait`) for the recorded outcome.
    Wait,
    /// Fail at once with [`Error::InFlight`].
    Reject,
}

/// How an operation's key is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keying {
    /// `key = <expr>`.
    Explicit,
    /// No `key`, idempotent: a hash of all arguments.
    Arguments,
    /// No `key`, non-idempotent: every call is a new effect with a new key.
    Unique,
}

/// Per-operation settings from the attribute; `None` means the runtime's default.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How the key is made.
    pub keying: Keying,
    /// `in_flight = wait | reject`.
    pub in_flight: InFlight,
    /// `lease = "30s"`.
    pub lease: Option<Duration>,
    /// `retention = "7d"`.
    pub retention: Option<Duration>,
    /// `retry = N`: runs of the body after the first (idempotent only).
    pub retry: Option<u32>,
    /// `cache_errors`: record `Err` outcomes and replay them.
    pub cache_errors: bool,
    /// `probe = f` is set.
    pub probe: bool,
}

impl Options {
    /// The defaults: wait for in-flight duplicates, runtime lease and retention, no
    /// retry, errors not cached, no probe.
    pub const DEFAULT: Options = Options {
        keying: Keying::Arguments,
        in_flight: InFlight::Wait,
        lease: None,
        retention: None,
        retry: None,
        cache_errors: false,
        probe: false,
    };
}

/// An annotated operation, implemented by the companion struct the macros emit.
pub trait Operation: Send + Sync + 'static {
    /// The stable name that records and the catalog are keyed by.
    const NAME: &'static str;
    /// Idempotent or not.
    const KIND: Kind;
    /// Attribute settings.
    const OPTIONS: Options;
    /// The `T` of `Result<T, E>`.
    type Output: Output;
    /// The `E` of `Result<T, E>`.
    type Error: OperationError;

    /// How errors are recorded and replayed when they are cached
    /// (`cache_errors`); `None`: errors are not cached.
    const ERROR_CODEC: Option<ErrorCodec<Self::Error>> = None;

    /// How the error classifies itself (see [`ErrorClass`]).
    fn classify(_error: &Self::Error) -> (bool, bool) {
        (false, true)
    }
}

/// An error type may implement this to tell tempox more about a failure.
///
/// ```
/// # extern crate tempox_runtime as tempox;
/// use tempox::ErrorClass;
///
/// #[derive(Debug)]
/// enum PaymentError { Declined, Timeout, Tempox(tempox::Error) }
///
/// impl ErrorClass for PaymentError {
///     // A timeout after the request was sent: the charge may have gone through.
///     fn outcome_unknown(&self) -> bool { matches!(self, PaymentError::Timeout) }
///     // A declined card stays declined.
///     fn retryable(&self) -> bool { !matches!(self, PaymentError::Declined) }
/// }
/// ```
pub trait ErrorClass {
    /// Whether the effect may have happened despite the error. For a
    /// non-idempotent operation, `true` is handled like a crash: the record stays
    /// claimed and is probed or parked as `OutcomeUnknown`. Default: `false`.
    fn outcome_unknown(&self) -> bool {
        false
    }

    /// Whether running again may succeed (`retry = N` stops at a `false`).
    /// Default: `true`.
    fn retryable(&self) -> bool {
        true
    }
}

/// The companion struct of an annotated function: it shares the function's name
/// and visibility, so `compensate = path::to::f` names it.
///
/// It carries no types of the function's signature, so a `pub` function may
/// use private argument, output or error types; the [`Operation`] impl is on a
/// private type of its own.
#[doc(hidden)]
pub trait Companion: 'static {
    /// The operation's name ([`Operation::NAME`]).
    const NAME: &'static str;
}

/// Marks operations declared `#[idempotent]`: only they may be compensations.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `#[idempotent]`, so it cannot be a compensation",
    label = "not an `#[idempotent]` operation",
    note = "a compensation may run more than once (after a crash, or from several reconcilers), so it must be safe to repeat: annotate it with `#[tempox::idempotent]`, or write `compensate = noop` if nothing can undo this effect"
)]
pub trait IdempotentOperation: Companion {}

/// A one-argument `#[idempotent]` operation that can be called as `f(output)`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot compensate an operation whose output is `{O}`",
    label = "this compensation does not take `{O}`",
    note = "a compensation is called as `f(output)`: it takes exactly one argument, the compensated operation's output, by value (`{O}`) or by reference (`&{O}`)"
)]
pub trait Compensates<O>: Companion {
    /// Calls the compensation with `output`; `Err` is its error's message.
    fn compensate(output: O) -> impl Future<Output = Result<(), String>> + 'static;
}

/// Encodes and decodes a cached error.
pub struct ErrorCodec<E> {
    /// To JSON.
    pub encode: fn(&E) -> Result<Vec<u8>, serde_json::Error>,
    /// From JSON.
    pub decode: fn(&[u8]) -> Result<E, serde_json::Error>,
}

impl<E> std::fmt::Debug for ErrorCodec<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorCodec")
    }
}

/// The JSON codec of a cacheable error type.
#[doc(hidden)]
pub const fn error_codec<E: CacheableError>() -> ErrorCodec<E> {
    fn encode<E: Serialize>(e: &E) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(e)
    }
    fn decode<E: DeserializeOwned>(b: &[u8]) -> Result<E, serde_json::Error> {
        serde_json::from_slice(b)
    }
    ErrorCodec {
        encode: encode::<E>,
        decode: decode::<E>,
    }
}

/// The return type of an annotated function, written `Result<T, E>` or as an
/// alias of it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Result`",
    label = "annotated functions must return `Result<T, E>`",
    note = "tempox records `Ok` outputs and reports its own failures through `Err`: return `Result<T, E>` (or an alias of it)"
)]
pub trait ResultType {
    /// `T`.
    type Ok;
    /// `E`.
    type Err;

    /// The value as a `Result` (the identity for `Result` itself).
    #[doc(hidden)]
    fn into_result(self) -> Result<Self::Ok, Self::Err>;

    /// A `Result` as the return type (the identity for `Result` itself).
    #[doc(hidden)]
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> ResultType for Result<T, E> {
    type Ok = T;
    type Err = E;

    #[inline(always)]
    fn into_result(self) -> Result<T, E> {
        self
    }

    #[inline(always)]
    fn from_result(result: Result<T, E>) -> Self {
        result
    }
}

/// The error type of an annotated function.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` cannot carry tempox's errors",
    label = "needs `From<tempox::Error>` and `Display`",
    note = "runtime failures (store outages, key reuse, ...) reach the caller through the function's own error type: add `impl From<tempox::Error> for {Self}` (with thiserror: a `#[error(transparent)] Tempox(#[from] tempox::Error)` variant), and implement `Display`"
)]
pub trait OperationError: Display + Send + 'static {
    /// The runtime's failure as this error (through `From<tempox::Error>`).
    fn from_tempox(error: Error) -> Self;
}
// `From<Error>` is a bound of the impl, not a supertrait: rustc then reports a
// missing conversion with the message above instead of its own.
#[diagnostic::do_not_recommend]
impl<E: From<Error> + Display + Send + 'static> OperationError for E {
    fn from_tempox(error: Error) -> Self {
        E::from(error)
    }
}

/// The output type of an annotated function.
#[diagnostic::on_unimplemented(
    message = "the output `{Self}` cannot be recorded",
    label = "needs `Serialize + DeserializeOwned + Send`",
    note = "tempox records the output to replay it for later calls with the same key: derive `serde::Serialize` and `serde::Deserialize` for it (outputs cannot borrow)"
)]
pub trait Output: Send + Sized + 'static {
    /// The output as JSON, to record.
    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    /// A recorded output back.
    fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error>;
}
// As for `OperationError`: serde's traits are bounds of the impl, not
// supertraits, so one message says what to derive.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + 'static> Output for T {
    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(buf, self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// An argument of an annotated function.
#[diagnostic::on_unimplemented(
    message = "the argument type `{Self}` is not `Serialize`",
    label = "tempox records and fingerprints every argument",
    note = "derive `serde::Serialize` for it; arguments are recorded with the call and hashed into its fingerprint, so a reused key with other arguments is caught"
)]
pub trait Argument: Serialize {}
#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized> Argument for T {}

/// The value of a `key = <expr>`.
#[diagnostic::on_unimplemented(
    message = "the key `{Self}` is not `Serialize`",
    label = "this key expression",
    note = "a key is made from a value that implements `serde::Serialize`, such as a `String`, an integer or a newtype of one (e.g. `key = order.id`)"
)]
pub trait KeyValue: Serialize {}
#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized> KeyValue for T {}

/// An error type that `cache_errors` records and replays.
#[diagnostic::on_unimplemented(
    message = "`cache_errors` needs the error type `{Self}` to be `Serialize` and `DeserializeOwned`",
    label = "errors are cached here",
    note = "a cached error is recorded and handed back to later calls with the key: derive `serde::Serialize` and `serde::Deserialize` for it, or drop `cache_errors`"
)]
pub trait CacheableError: Serialize + DeserializeOwned {}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> CacheableError for T {}

/// An argument of an operation with `retry = N`.
#[diagnostic::on_unimplemented(
    message = "`retry` runs the body again, so the argument type `{Self}` must be `Clone`",
    label = "moved into the body on each run",
    note = "derive or implement `Clone` for it, take it by reference, or drop `retry`"
)]
pub trait RetryArgument: Clone {}
#[diagnostic::do_not_recommend]
impl<T: Clone> RetryArgument for T {}

/// Selects [`ErrorClass`] when the error implements it, a default otherwise
/// (autoref specialisation in generated code with a concrete error type).
#[doc(hidden)]
#[derive(Debug)]
pub struct Classify<'a, E>(pub &'a E);

#[doc(hidden)]
pub trait ClassifyByTrait {
    fn __tempox_classify(&self) -> (bool, bool);
}

impl<E: ErrorClass> ClassifyByTrait for Classify<'_, E> {
    fn __tempox_classify(&self) -> (bool, bool) {
        (self.0.outcome_unknown(), self.0.retryable())
    }
}

#[doc(hidden)]
pub trait ClassifyByDefault {
    fn __tempox_classify(&self) -> (bool, bool);
}

impl<E> ClassifyByDefault for &Classify<'_, E> {
    fn __tempox_classify(&self) -> (bool, bool) {
        (false, true)
    }
}

/// What a `probe = f` returns.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a probe returns `Result<Option<{T}>, {E}>`, not `{Self}`",
    label = "this probe does not answer with `Result<Option<{T}>, {E}>`",
    note = "after a crash, the probe tells whether the effect happened: `Ok(Some(output))` if it did (the output is recorded), `Ok(None)` if it did not (the body runs), `Err(e)` if it cannot tell yet"
)]
pub trait ProbeAnswer<T, E> {
    /// The answer.
    fn into_answer(self) -> Result<Option<T>, E>;
}

impl<T, E> ProbeAnswer<T, E> for Result<Option<T>, E> {
    fn into_answer(self) -> Self {
        self
    }
}

/// A probe's answer (the bound is the check that it has the right shape).
#[doc(hidden)]
pub fn probe_answer<T, E, A: ProbeAnswer<T, E>>(answer: A) -> Result<Option<T>, E> {
    answer.into_answer()
}

/// The name of a compensation, which must be `#[idempotent]` (the bound is the
/// check; rustc quotes this function's name when it fails).
#[doc(hidden)]
pub const fn idempotent_compensation<C: IdempotentOperation>() -> &'static str {
    C::NAME
}

/// Decodes a recorded output and calls the compensation `C` with it (the bound is
/// the check that `C` takes the output).
#[doc(hidden)]
pub async fn call_compensation<C, O>(output: Vec<u8>) -> Result<(), String>
where
    C: Compensates<O>,
    O: Output,
{
    let output =
        O::decode(&output).map_err(|e| format!("cannot decode the recorded output: {e}"))?;
    C::compensate(output).await
}

/// The key made from a `key = <expr>` value.
#[doc(hidden)]
pub fn key_of<T: KeyValue + ?Sized>(value: &T) -> Result<Key, KeyError> {
    Key::from_value(value)
}

/// An argument, type-erased: the `Serialize` bound is checked here, at the
/// argument, and nowhere else.
#[doc(hidden)]
pub fn argument<T: Argument>(value: &T) -> ArgumentRef<'_> {
    ArgumentRef(value)
}

/// See [`argument`].
#[doc(hidden)]
pub struct ArgumentRef<'a>(&'a dyn erased_serde::Serialize);

impl std::fmt::Debug for ArgumentRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArgumentRef")
    }
}

impl Serialize for ArgumentRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        erased_serde::serialize(self.0, serializer)
    }
}

/// A fresh copy of an argument for another run of a `retry` body.
#[doc(hidden)]
pub fn retry_clone<T: RetryArgument>(value: &T) -> T {
    value.clone()
}

/// Decodes a recorded output for a compensation.
#[doc(hidden)]
pub fn decode_output<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("cannot decode the recorded output: {e}"))
}

/// A compensation's result, reduced to what the record keeps. Bound through
/// `Op` (whose error is `Display` already), so an error type that is not
/// `Display` is reported once, at the operation's error type.
#[doc(hidden)]
pub fn compensation_result<Op: Operation>(
    result: Result<Op::Output, Op::Error>,
) -> Result<(), String> {
    result.map(drop).map_err(|e| e.to_string())
}

/// An argument of a `#[workflow]`: decoded from the record when a crashed
/// workflow is resumed.
#[diagnostic::on_unimplemented(
    message = "the workflow argument `{Self}` cannot be restored from its record",
    label = "a crashed workflow is resumed from its recorded input",
    note = "workflow arguments are owned and decoded from the record when another process resumes the workflow: derive `serde::Deserialize` for it (and make it `Send + 'static`)"
)]
pub trait WorkflowArgument: DeserializeOwned + Send + 'static {}
#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned + Send + 'static> WorkflowArgument for T {}

/// An argument of an operation with a `probe`: the reconciler probes from the
/// record alone.
#[diagnostic::on_unimplemented(
    message = "`probe` needs the argument `{Self}` to be restorable from the record",
    label = "the reconciler runs the probe after a crash, from the recorded input",
    note = "derive `serde::Deserialize` for it (a `&T` argument is restored as `T`, `&str` as `String`, `&[T]` as `Vec<T>`)"
)]
pub trait ProbeArgument: DeserializeOwned + Send + 'static {}
#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned + Send + 'static> ProbeArgument for T {}

/// What a probe run from the record found, as the catalog hands it back.
#[doc(hidden)]
pub fn probe_found<T: Output, E: Display>(
    found: Result<Option<T>, E>,
) -> Result<Option<Vec<u8>>, String> {
    match found {
        Ok(Some(output)) => {
            let mut bytes = Vec::new();
            output
                .encode(&mut bytes)
                .map_err(|e| format!("cannot encode the probed output: {e}"))?;
            Ok(Some(bytes))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A workflow's recorded input, decoded one argument at a time.
#[doc(hidden)]
#[derive(Debug)]
pub struct WorkflowInput {
    values: std::vec::IntoIter<serde_json::Value>,
    index: usize,
}

/// Reads a workflow's recorded input (the JSON array of its arguments).
#[doc(hidden)]
pub fn workflow_input(bytes: &[u8]) -> Result<WorkflowInput, String> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| format!("cannot decode the recorded input: {e}"))?;
    Ok(WorkflowInput {
        values: values.into_iter(),
        index: 0,
    })
}

impl WorkflowInput {
    /// The next argument of an operation being probed.
    pub fn restore<T: ProbeArgument>(&mut self) -> Result<T, String> {
        self.decode()
    }

    fn decode<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        self.index += 1;
        let value = self
            .values
            .next()
            .ok_or_else(|| format!("the recorded input has no argument {}", self.index))?;
        serde_json::from_value(value).map_err(|e| {
            format!(
                "cannot decode argument {} of the recorded input: {e}",
                self.index
            )
        })
    }

    /// The next argument.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: WorkflowArgument>(&mut self) -> Result<T, String> {
        self.decode()
    }
}
