//! An in-process store: a map behind a mutex, with indexes for due work and
//! retention. Clones share the same records.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{Query, Store};
use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::record::{
    ClaimRequest, Claimed, Record, RecordId, Status, Timestamp, Transition, Transitioned,
    plan_claim, plan_transition,
};

/// Records held in this process's memory; lost when it exits.
///
/// For tests and for work whose records need not survive a crash. Clones share
/// the same records, so two [`Runtime`](crate::Runtime)s built on clones of one
/// `MemoryStore` see each other's calls.
///
/// ```
/// use tempox::store::MemoryStore;
/// use tempox::Runtime;
///
/// let rt = Runtime::builder().store(MemoryStore::new()).build()?;
/// # Ok::<(), tempox::Error>(())
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<RecordId, Record>,
    due: BTreeSet<(Timestamp, RecordId)>,
    expiry: BTreeSet<(Timestamp, RecordId)>,
}

impl Inner {
    /// Writes `r`, keeping both indexes in step with it.
    fn put(&mut self, r: Record) {
        if let Some(old) = self.records.get(&r.id) {
            if let Some(at) = old.due_at {
                self.due.remove(&(at, old.id.clone()));
            }
            if let Some(at) = old.expires_at {
                self.expiry.remove(&(at, old.id.clone()));
            }
        }
        if let Some(at) = r.due_at {
            self.due.insert((at, r.id.clone()));
        }
        if let Some(at) = r.expires_at {
            self.expiry.insert((at, r.id.clone()));
        }
        self.records.insert(r.id.clone(), r);
    }

    fn remove(&mut self, id: &RecordId) {
        if let Some(old) = self.records.remove(id) {
            if let Some(at) = old.due_at {
                self.due.remove(&(at, old.id.clone()));
            }
            if let Some(at) = old.expires_at {
                self.expiry.remove(&(at, old.id));
            }
        }
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store that reads time from `clock` (e.g. a
    /// [`ManualClock`](crate::clock::ManualClock) in tests).
    pub fn with_clock(clock: impl Clock) -> Self {
        MemoryStore {
            inner: Arc::new(Mutex::new(Inner::default())),
            clock: Arc::new(clock),
        }
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written record: every
        // write is a single `put` of a record computed beforehand.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.len())
            .field("clock", &self.clock)
            .finish()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let outcome = plan_claim(inner.records.get(&req.id), req, now);
        match &outcome {
            Claimed::Acquired { record, .. } | Claimed::MarkedUnknown(record) => {
                inner.put(record.clone());
            }
            Claimed::Existing(_) => {}
        }
        Ok(outcome)
    }

    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let outcome = plan_transition(inner.records.get(&t.id), t, now)?;
        if let Transitioned::Applied(record) = &outcome {
            inner.put(record.clone());
        }
        Ok(outcome)
    }

    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let Some(current) = inner.records.get(id) else {
            return Ok(None);
        };
        if current.status != status || current.token != token {
            return Ok(None);
        }
        let mut r = current.clone();
        let until = now.plus(lease);
        r.lease_until = Some(until);
        r.due_at = Some(until);
        inner.put(r);
        Ok(Some(until))
    }

    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().records.get(id).cloned())
    }

    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock();
        Ok(inner
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .filter_map(|(_, id)| inner.records.get(id).cloned())
            .collect())
    }

    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let mut found: Vec<&Record> = inner
            .records
            .values()
            .filter(|r| query.after.as_ref().is_none_or(|after| &r.id > after))
            .filter(|r| query.matches(r))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.truncate(query.effective_limit());
        Ok(found.into_iter().cloned().collect())
    }

    async fn expire(&self, limit: usize) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let ids: Vec<RecordId> = inner
            .expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect();
        let mut removed = 0;
        for id in ids {
            if removed == limit {
                break;
            }
            let expired = inner
                .records
                .get(&id)
                .is_some_and(|r| r.retention_passed(now));
            if expired {
                inner.remove(&id);
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        Ok(self.clock.now())
    }
}
