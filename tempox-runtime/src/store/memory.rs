//! An in-process store: a map behind a mutex, with indexes for due work and
//! retention. Clones share the same records.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;
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
/// # extern crate tempox_runtime as tempox;
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

/// The records and two time indexes. Index entries are ordered by
/// `(time, seq)`, a number given to each record on insert, so keeping them in
/// step compares integers, not ids.
#[derive(Default)]
struct Inner {
    // foldhash: fast on short keys, seeded per map against collision floods.
    records: HashMap<RecordId, Slot, RandomState>,
    due: BTreeMap<(Timestamp, u64), RecordId>,
    expiry: BTreeMap<(Timestamp, u64), RecordId>,
    next_seq: u64,
}

struct Slot {
    record: Record,
    seq: u64,
}

impl Inner {
    fn get(&self, id: &RecordId) -> Option<&Record> {
        self.records.get(id).map(|slot| &slot.record)
    }

    /// Writes `r`, keeping both indexes in step with it.
    fn put(&mut self, r: Record) {
        let id = r.id.clone();
        let (due, expires) = (r.due_at, r.expires_at);
        let (seq, old_due, old_expires) = match self.records.get_mut(&id) {
            Some(slot) => {
                let old = std::mem::replace(&mut slot.record, r);
                (slot.seq, old.due_at, old.expires_at)
            }
            None => {
                self.next_seq += 1;
                let seq = self.next_seq;
                self.records.insert(id.clone(), Slot { record: r, seq });
                (seq, None, None)
            }
        };
        reindex(&mut self.due, seq, old_due, due, &id);
        reindex(&mut self.expiry, seq, old_expires, expires, &id);
    }

    fn remove(&mut self, id: &RecordId) {
        if let Some(slot) = self.records.remove(id) {
            if let Some(at) = slot.record.due_at {
                self.due.remove(&(at, slot.seq));
            }
            if let Some(at) = slot.record.expires_at {
                self.expiry.remove(&(at, slot.seq));
            }
        }
    }
}

fn reindex(
    index: &mut BTreeMap<(Timestamp, u64), RecordId>,
    seq: u64,
    old: Option<Timestamp>,
    new: Option<Timestamp>,
    id: &RecordId,
) {
    if old == new {
        return;
    }
    if let Some(at) = old {
        index.remove(&(at, seq));
    }
    if let Some(at) = new {
        index.insert((at, seq), id.clone());
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
        let outcome = plan_claim(inner.get(&req.id), req, now);
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
        let outcome = plan_transition(inner.get(&t.id), t, now)?;
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
        let Some(current) = inner.get(id) else {
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
        Ok(self.lock().get(id).cloned())
    }

    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock();
        Ok(inner
            .due
            .iter()
            .take_while(|((at, _), _)| *at <= now)
            .take(limit)
            .filter_map(|(_, id)| inner.get(id).cloned())
            .collect())
    }

    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let mut found: Vec<&Record> = inner
            .records
            .values()
            .map(|slot| &slot.record)
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
            .take_while(|((at, _), _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect();
        let mut removed = 0;
        for id in ids {
            if removed == limit {
                break;
            }
            let expired = inner.get(&id).is_some_and(|r| r.retention_passed(now));
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
