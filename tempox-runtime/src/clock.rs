//! Where stores read the time from.
//!
//! Leases and retention are compared against a store's clock. The embedded
//! stores read [`SystemClock`] by default; tests hand them a [`ManualClock`] to
//! move time forward without sleeping. (The Redis store reads the server's `TIME`.)

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::record::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The process's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// # extern crate tempox_runtime as tempox;
/// use std::time::Duration;
/// use tempox::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(31));
/// assert_eq!(clock.now().as_millis() - before.as_millis(), 31_000);
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock set to the wall clock's current time.
    pub fn new() -> Self {
        ManualClock {
            ms: Arc::new(AtomicU64::new(Timestamp::now().as_millis())),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.ms.load(Ordering::SeqCst))
    }
}
