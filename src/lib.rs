//! tempox makes retries safe.
//!
//! Annotate the async functions you already have, and every call goes through a
//! runtime that deduplicates by key, records each call in a durable registry
//! before it runs, and knows how to undo what cannot simply be run again.
//!
//! # Concepts
//!
//! - **Operation**: an annotated `async fn` returning `Result<T, E>`. Its *name*
//!   (`name = "payments.charge"`, by default `module::path::function`) is its
//!   identity in every store; pin it before the first deploy.
//! - **Key**: which calls are "the same". `key = order.id` names it; by default
//!   it is a hash of all arguments. The first call with a key runs; later calls
//!   get the recorded output back (a *replay*) without running the body.
//! - **Fingerprint**: a hash of all arguments, stored with the record. A key
//!   reused with other arguments is refused with [`Error::KeyReuse`], never
//!   answered with another request's result.
//! - **Record**: one per call ([`Record`]), in a [`store`]: status, input,
//!   output or error, a lease and a fencing token. It is written *before* the
//!   body runs (write-ahead); every status change is one compare-and-set.
//! - **Idempotent or not**: an [`idempotent`] operation may simply run again
//!   after a crash. A [`non_idempotent`] one never is: a crash leaves an unknown
//!   outcome that its `probe` settles or that is parked for an operator as
//!   `OutcomeUnknown`. Each non-idempotent operation names its **compensation**,
//!   an idempotent function that undoes it (or `noop`).
//! - **Catalog**: every operation registers itself at link time, so any process
//!   can compensate a record knowing only its operation's name
//!   ([`Runtime::compensate`]).
//! - **Workflow**: a [`workflow`]'s annotated calls are checkpointed steps; a
//!   failure undoes the completed ones newest first, a crash is resumed (or
//!   rolled back) from the record in any process.
//! - **Reconciler**: [`Runtime::reconciler`] runs passes that drive every record
//!   to a final state — done, compensated, or parked for an operator
//!   ([`Runtime::dead_letters`], [`Runtime::retry`], [`Runtime::resolve`]) —
//!   and compares registered [`mirror::Mirror`]s.
//!
//! # Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tempox::store::MemoryStore;
//! use tempox::{Runtime, idempotent, non_idempotent};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Order { id: String, cents: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum ShopError {
//!     #[error(transparent)]
//!     Tempox(#[from] tempox::Error),
//! }
//!
//! /// Runs once per order id; later calls replay the recorded reservation.
//! #[idempotent(key = order.id)]
//! async fn reserve(order: &Order) -> Result<u32, ShopError> {
//!     Ok(7) // the reservation's number
//! }
//!
//! /// A compensation is idempotent: it may run more than once.
//! #[idempotent]
//! async fn refund(charge: &String) -> Result<(), ShopError> {
//!     Ok(())
//! }
//!
//! /// At most once per order; undone by `refund(charge_id)`.
//! #[non_idempotent(key = order.id, compensate = refund)]
//! async fn charge(order: &Order) -> Result<String, ShopError> {
//!     Ok(format!("ch_{}", order.id))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::builder().store(MemoryStore::new()).build()?;
//! let order = Order { id: "o-1".into(), cents: 4_999 };
//! rt.scope(async {
//!     assert_eq!(reserve(&order).await?, 7); // runs
//!     assert_eq!(reserve(&order).await?, 7); // replays
//!     charge(&order).await?;
//!     Ok::<_, ShopError>(())
//! })
//! .await?;
//! assert_eq!(rt.counters().replays, 1);
//! # Ok(()) }
//! ```
//!
//! # Where to go next
//!
//! - [`idempotent`], [`non_idempotent`] and [`workflow`]: every attribute
//!   argument, the rules they check, what they expand to.
//! - [`Runtime`]: the builder, ambient lookup ([`Runtime::scope`],
//!   [`Runtime::install_global`]), operator actions ([`Runtime::dead_letters`],
//!   [`Runtime::retry`], [`Runtime::resolve`]).
//! - [`Reconciler`]: passes, the alert hook, `spawn()`; [`mirror`] for state
//!   mirroring.
//! - [`store`]: the [`Store`](store::Store) trait and its backends.
//! - [`record`]: the record, its statuses and the transition table.
//! - [`Error`]: everything tempox reports, always through your own error type.
//! - `http` (feature `http`): a tower layer for the `Idempotency-Key` request
//!   header, so an HTTP API's clients can retry safely.
//! - `cli` (feature `cli`): the operator command line, `tempox`.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc = include_str!("docs/idempotent.md")]
#[doc(inline)]
pub use tempox_macros::idempotent;
#[doc = include_str!("docs/non_idempotent.md")]
#[doc(inline)]
pub use tempox_macros::non_idempotent;
#[doc = include_str!("docs/workflow.md")]
#[doc(inline)]
pub use tempox_macros::workflow;

#[doc(inline)]
pub use tempox_runtime::{
    Backoff, Counters, Error, ErrorClass, Fingerprint, Key, KeyError, Kind, PassReport, Reconciler,
    ReconcilerHandle, Record, RecordId, Result, Runtime, RuntimeBuilder, Status, StoreError,
    StoreErrorKind, Timestamp,
};

#[doc(inline)]
pub use tempox_runtime::{clock, mirror, record};

#[cfg(feature = "cli")]
#[doc(inline)]
pub use tempox_runtime::cli;

#[cfg(feature = "http")]
#[doc(inline)]
pub use tempox_runtime::http;

/// Stores: where records live.
///
/// Every backend implements [`Store`](store::Store) and passes the same
/// conformance suite.
pub mod store {
    #[doc(inline)]
    pub use tempox_runtime::store::*;
}

/// Codegen-facing support surface for the attribute macros; not part of the
/// public API and not covered by semver.
#[doc(hidden)]
pub mod __private {
    pub use tempox_runtime::catalog::{
        BoxFuture, Compensation, Location, OPERATIONS, OperationEntry, Recover, WORKFLOWS,
        WorkflowEntry,
    };
    pub use tempox_runtime::invoke::{Begin, Guard, Prepared, begin, prepare};
    pub use tempox_runtime::operation::*;
    pub use tempox_runtime::workflow::Workflow;
    pub use tempox_runtime::{Kind, linkme, serde, serde_json};
}
