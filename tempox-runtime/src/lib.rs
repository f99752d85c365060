//! The runtime of [tempox](https://docs.rs/tempox): records, stores, the call
//! path, the compensation catalog. Use it through the `tempox` crate, which
//! re-exports everything here together with the attribute macros.

pub mod catalog;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod invoke;
pub mod key;
pub mod mirror;
pub mod operation;
pub mod reconcile;
pub mod record;
mod recovery;
mod runtime;
pub mod store;
pub mod workflow;

pub use error::{Error, Result, StoreError, StoreErrorKind};
pub use key::{Fingerprint, Key, KeyError};
pub use operation::ErrorClass;
pub use reconcile::{AlertHook, PassReport, Reconciler, ReconcilerHandle};
pub use record::{Kind, Record, RecordId, Status, Timestamp};
pub use runtime::{Backoff, Counters, Runtime, RuntimeBuilder};

#[doc(hidden)]
pub use linkme;
#[doc(hidden)]
pub use serde;
#[doc(hidden)]
pub use serde_json;
