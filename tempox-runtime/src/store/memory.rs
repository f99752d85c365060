//! An in-process store: a map behind a mutex, with indexes for due work and
//! retention. Clones share the same records.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};

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

/// The records and two time indexes (due work, retention).
#[derive(Default)]
struct Inner {
    // foldhash: fast on short keys, seeded per map against collision floods.
    records: HashMap<RecordId, Slot, RandomState>,
    due: TimeIndex,
    expiry: TimeIndex,
    /// Stamps index entries; 0 means "not indexed".
    next_stamp: u64,
}

struct Slot {
    record: Record,
    due_stamp: u64,
    expiry_stamp: u64,
}

/// Records by a time, earliest first: a min-heap of `(time, stamp, id)`. An
/// entry is live while its record's slot still carries its stamp; entries that
/// went stale are dropped when met, and compacted away when they outnumber
/// the live ones. Calls mostly push later and later times, which a heap takes
/// in one comparison (an ordered map would search and shift nodes).
#[derive(Default)]
struct TimeIndex {
    heap: BinaryHeap<Reverse<(Timestamp, u64, RecordId)>>,
    live: usize,
}

impl TimeIndex {
    /// Moves a record's entry from `old` to `new`; returns the stamp to keep.
    fn update(
        &mut self,
        stamp: u64,
        old: Option<Timestamp>,
        new: Option<Timestamp>,
        next_stamp: &mut u64,
        id: &RecordId,
    ) -> u64 {
        if old == new {
            return stamp;
        }
        if old.is_some() {
            self.live -= 1;
        }
        let Some(at) = new else {
            return 0;
        };
        *next_stamp += 1;
        self.live += 1;
        self.heap.push(Reverse((at, *next_stamp, id.clone())));
        *next_stamp
    }

    fn needs_compaction(&self) -> bool {
        self.heap.len() > 2 * self.live + 1024
    }
}

impl Inner {
    fn get(&self, id: &RecordId) -> Option<&Record> {
        self.records.get(id).map(|slot| &slot.record)
    }

    /// Writes `r`, keeping both indexes in step with it.
    fn put(&mut self, r: Record) {
        let Inner {
            records,
            due,
            expiry,
            next_stamp,
        } = self;
        let id = r.id.clone();
        let (new_due, new_expires) = (r.due_at, r.expires_at);
        // A slot's stamp is non-zero exactly when its record has that time.
        let (slot, old_due, old_expires) = match records.entry(id.clone()) {
            Entry::Occupied(e) => {
                let slot = e.into_mut();
                let old = std::mem::replace(&mut slot.record, r);
                (slot, old.due_at, old.expires_at)
            }
            Entry::Vacant(e) => {
                let slot = e.insert(Slot {
                    record: r,
                    due_stamp: 0,
                    expiry_stamp: 0,
                });
                (slot, None, None)
            }
        };
        slot.due_stamp = due.update(slot.due_stamp, old_due, new_due, next_stamp, &id);
        slot.expiry_stamp =
            expiry.update(slot.expiry_stamp, old_expires, new_expires, next_stamp, &id);
        if due.needs_compaction() {
            due.heap.retain(|Reverse((_, stamp, id))| {
                records.get(id).is_some_and(|s| s.due_stamp == *stamp)
            });
        }
        if expiry.needs_compaction() {
            expiry.heap.retain(|Reverse((_, stamp, id))| {
                records.get(id).is_some_and(|s| s.expiry_stamp == *stamp)
            });
        }
    }

    fn remove(&mut self, id: &RecordId) {
        if let Some(slot) = self.records.remove(id) {
            if slot.due_stamp != 0 {
                self.due.live -= 1;
            }
            if slot.expiry_stamp != 0 {
                self.expiry.live -= 1;
            }
        }
    }

    /// Live entries of `index` with a time at or before `now`, earliest first,
    /// at most `limit`; stale ones met on the way are dropped.
    fn take_due(&mut self, which: Which, now: Timestamp, limit: usize) -> Vec<(u64, RecordId)> {
        let Inner {
            records,
            due,
            expiry,
            ..
        } = self;
        let index = match which {
            Which::Due => due,
            Which::Expiry => expiry,
        };
        let mut found = Vec::new();
        while found.len() < limit {
            match index.heap.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, stamp, id))) = index.heap.pop() else {
                break;
            };
            let live = records.get(&id).is_some_and(|s| match which {
                Which::Due => s.due_stamp == stamp,
                Which::Expiry => s.expiry_stamp == stamp,
            });
            if live {
                found.push((at, stamp, id));
            }
        }
        let out = found
            .iter()
            .map(|(_, stamp, id)| (*stamp, id.clone()))
            .collect();
        // What was read stays indexed until its record changes.
        index.heap.extend(found.into_iter().map(Reverse));
        out
    }
}

#[derive(Clone, Copy)]
enum Which {
    Due,
    Expiry,
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
        let mut inner = self.lock();
        let due = inner.take_due(Which::Due, now, limit);
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| inner.get(&id).cloned())
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
            .take_due(Which::Expiry, now, usize::MAX)
            .into_iter()
            .map(|(_, id)| id)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::{Fingerprint, Key};
    use crate::record::{Kind, OnExpired, Status, Transition};

    #[tokio::test]
    async fn stale_index_entries_do_not_pile_up() {
        let store = MemoryStore::new();
        for i in 0..10_000u32 {
            let req = ClaimRequest {
                id: RecordId::new(
                    "t.op",
                    &Key::new(i.to_string()).unwrap_or_else(|e| panic!("{e}")),
                ),
                kind: Kind::Idempotent,
                fingerprint: Fingerprint::from_bytes([0; 16]),
                input: b"[]".to_vec().into(),
                lease: Duration::from_secs(30),
                on_expired: OnExpired::TakeOver,
                workflow: None,
                step: None,
            };
            let Ok(Claimed::Acquired { record, .. }) = store.claim(&req).await else {
                panic!("not acquired");
            };
            let t = Transition::new(record.id, Status::Pending, record.token, Status::Completed);
            assert!(matches!(
                store.transition(&t).await,
                Ok(Transitioned::Applied(_))
            ));
        }
        let inner = store.lock();
        // Every claim left a stale due entry; compaction keeps them bounded.
        assert_eq!(inner.due.live, 0);
        assert!(inner.due.heap.len() <= 1024 + 1, "{}", inner.due.heap.len());
        assert_eq!(inner.expiry.live, 0, "no retention was asked for");
    }
}
