//! tempox makes retries safe.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(inline)]
pub use tempox_macros::{idempotent, non_idempotent};

#[doc(inline)]
pub use tempox_runtime::{
    Backoff, Counters, Error, ErrorClass, Fingerprint, Key, KeyError, Kind, Record, RecordId,
    Result, Runtime, RuntimeBuilder, Status, StoreError, StoreErrorKind, Timestamp,
};

pub use tempox_runtime::{clock, record};

/// Stores: where records live.
pub mod store {
    #[doc(inline)]
    pub use tempox_runtime::store::*;
}

/// Codegen-facing support surface for the attribute macros; not part of the
/// public API and not covered by semver.
#[doc(hidden)]
pub mod __private {
    pub use tempox_runtime::catalog::{
        BoxFuture, Compensation, Location, OPERATIONS, OperationEntry,
    };
    pub use tempox_runtime::invoke::{Begin, Guard, Prepared, begin, prepare};
    pub use tempox_runtime::operation::*;
    pub use tempox_runtime::{Kind, linkme, serde, serde_json};
}
