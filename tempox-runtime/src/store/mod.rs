//! The durable registry behind the runtime: one [`Store`] trait, several backends.
//!
//! A store holds [`Record`]s and changes them only through atomic
//! compare-and-set steps whose rules live in [`crate::record`]: [`Store::claim`]
//! applies [`plan_claim`](crate::record::plan_claim) and [`Store::transition`]
//! applies [`plan_transition`](crate::record::plan_transition), each as one
//! indivisible step against the record's current state. Everything else a store
//! does is reading, plus removing records past their retention.
//!
//! Backends: [`MemoryStore`] (in-process), and behind cargo features the
//! durable stores: `SqliteStore` (`sqlite`, on by default) and `RedisStore`
//! (`redis`; `redis-tls` adds `rediss://`). Every backend passes the same
//! conformance suite.

mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Benchmark-only access to the redis store's script calls (see
/// `benches/load.rs`); not part of the API.
#[cfg(feature = "redis")]
#[doc(hidden)]
pub use self::redis::bench as redis_bench;
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder, Synchronous, WriteStats};

use crate::error::StoreError;
use crate::record::{
    ClaimRequest, Claimed, Record, RecordId, Status, Timestamp, Transition, Transitioned,
};

/// Which records [`Store::list`] returns.
///
/// Results are ordered by id; page through them with `after`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only records in one of these statuses (empty: any).
    pub statuses: Vec<Status>,
    /// Only records of this operation.
    pub op: Option<String>,
    /// Only steps of this workflow.
    pub workflow: Option<RecordId>,
    /// Only ids after this one.
    pub after: Option<RecordId>,
    /// At most this many (0: the store's default of 100).
    pub limit: usize,
}

impl Query {
    /// Records in any of `statuses`.
    pub fn statuses(statuses: &[Status]) -> Self {
        Query {
            statuses: statuses.to_vec(),
            ..Query::default()
        }
    }

    /// Whether `r` matches every filter but `after` and `limit`.
    pub fn matches(&self, r: &Record) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&r.status))
            && self.op.as_deref().is_none_or(|op| op == r.op())
            && self
                .workflow
                .as_ref()
                .is_none_or(|w| r.workflow.as_ref() == Some(w))
    }

    /// The limit to apply.
    pub fn effective_limit(&self) -> usize {
        if self.limit == 0 { 100 } else { self.limit }
    }
}

/// The registry of operation records.
///
/// Each method states what it promises; the conformance suite checks every
/// promise against every backend. All times are read from the store's own clock,
/// so several processes sharing a store agree on when a lease ends.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Atomically claims `req.id`: reads the record and writes what
    /// [`plan_claim`](crate::record::plan_claim) decides, as one step. Of any
    /// number of concurrent claims for one id, at most one gets
    /// [`Claimed::Acquired`] for a given record state (invariant 1), and the claim
    /// is durable before this returns (invariant 4).
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError>;

    /// Atomically applies `t` if the record is in `(t.from, t.token)`, as
    /// [`plan_transition`](crate::record::plan_transition) decides; otherwise
    /// returns [`Transitioned::Conflict`] and writes nothing (invariant 3).
    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError>;

    /// [`transition`](Self::transition) for a caller that needs no record
    /// back: whether `t` was applied, with the same promises. A store may skip
    /// copying or sending the record (the Redis store's answer to an applied
    /// transition is then a single word), and may read only the fields `t`
    /// needs: a record whose other fields are damaged may then be written, and
    /// the damage is reported by the next read of it, not by `apply`.
    async fn apply(&self, t: &Transition) -> Result<bool, StoreError> {
        Ok(matches!(
            self.transition(t).await?,
            Transitioned::Applied(_)
        ))
    }

    /// Extends the lease of a record held in `(status, token)` to `now + lease`
    /// (heartbeat). Returns the new end of the lease, or `None` when the record is
    /// no longer held with that token (fenced) and nothing was written.
    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError>;

    /// The record with this id, if any (records past retention may still be
    /// returned until [`Store::expire`] removes them).
    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError>;

    /// Up to `limit` records whose `due_at` has passed, earliest first: expired
    /// leases and scheduled retries. Costs what is due, not what is stored.
    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError>;

    /// Records matching `query`, ordered by id.
    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError>;

    /// Removes up to `limit` records in a final status whose retention has passed,
    /// and returns how many. Never removes an active record, a dead letter, or a
    /// workflow still rolling back.
    async fn expire(&self, limit: usize) -> Result<usize, StoreError>;

    /// The store's clock.
    async fn now(&self) -> Result<Timestamp, StoreError>;

    /// This store as an [`ImmediateStore`], when it is one: the call path then
    /// claims and records outcomes without an `async` round trip. The default,
    /// `None`, is right for every store that does I/O. A wrapper that adds
    /// behaviour to claims or transitions (faults, metrics) must keep the
    /// default rather than forward this, or the call path goes around it.
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        None
    }
}

/// A store whose claims and transitions never wait (it holds its records in
/// this process's memory, like [`MemoryStore`]), offered through
/// [`Store::immediate`]. Each method answers exactly as its [`Store`]
/// counterpart would, as the same one atomic step.
pub trait ImmediateStore: Send + Sync {
    /// [`Store::claim`], answered at once.
    fn claim_now(&self, req: &ClaimRequest) -> Result<Claimed, StoreError>;

    /// [`Store::transition`], answered at once.
    fn transition_now(&self, t: &Transition) -> Result<Transitioned, StoreError>;

    /// [`transition_now`](Self::transition_now) for a caller that needs no
    /// record back: whether `t` was applied. A store may skip copying the record
    /// out.
    fn apply_now(&self, t: &Transition) -> Result<bool, StoreError> {
        Ok(matches!(self.transition_now(t)?, Transitioned::Applied(_)))
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        (**self).claim(req).await
    }
    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        (**self).transition(t).await
    }
    async fn apply(&self, t: &Transition) -> Result<bool, StoreError> {
        (**self).apply(t).await
    }
    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        (**self).renew(id, status, token, lease).await
    }
    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        (**self).get(id).await
    }
    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        (**self).due(limit).await
    }
    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        (**self).list(query).await
    }
    async fn expire(&self, limit: usize) -> Result<usize, StoreError> {
        (**self).expire(limit).await
    }
    async fn now(&self) -> Result<Timestamp, StoreError> {
        (**self).now().await
    }
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        (**self).immediate()
    }
}
