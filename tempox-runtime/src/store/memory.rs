//! An in-process store: records in slots that stay put while they exist, a
//! hash table from id to slot, and lazily cleaned heaps of slots for due work
//! and retention, all behind one mutex. Clones share the same records.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{ImmediateStore, Query, Store};
use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::record::{
    ClaimRequest, Claimed, Record, RecordId, Status, Timestamp, Transition, Transitioned,
    apply_transition, check_legal, holds, plan_claim,
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

/// The records, found by id, and two time indexes (due work, retention).
///
/// Records live in slots that never move while they exist (a removed record's
/// slot is reused), so the id index holds slot numbers and each id's hash:
/// growing it moves 16-byte entries and hashes no id again, and the time
/// indexes name a record by its slot.
#[derive(Default)]
struct Inner {
    slots: Vec<Option<Slot>>,
    /// Slots emptied by removals, to fill first.
    free: Vec<usize>,
    /// Slot numbers by id.
    ids: HashTable<Pos>,
    // foldhash: fast on short keys, seeded per store against collision floods.
    hasher: RandomState,
    due: TimeIndex,
    expiry: TimeIndex,
    /// Stamps index entries; 0 means "not indexed".
    next_stamp: u64,
}

/// Where the record with an id lives.
#[derive(Clone, Copy)]
struct Pos {
    hash: u64,
    slot: usize,
}

struct Slot {
    record: Record,
    due_stamp: u64,
    expiry_stamp: u64,
}

/// Records by a time, earliest first: a min-heap of `(time, stamp, slot)`. An
/// entry is live while its slot holds a record carrying its stamp (stamps are
/// never reused, so a slot emptied or filled again leaves its old entries
/// stale); entries that went stale are dropped when met, and compacted away
/// when they outnumber the live ones. Calls mostly push later and later times,
/// which a heap takes in one comparison (an ordered map would search and shift
/// nodes).
#[derive(Default)]
struct TimeIndex {
    heap: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
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
        slot: usize,
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
        self.heap.push(Reverse((at, *next_stamp, slot)));
        *next_stamp
    }

    fn needs_compaction(&self) -> bool {
        self.heap.len() > 2 * self.live + 1024
    }
}

impl Inner {
    fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The slot of the record with this id (whose hash is `hash`).
    fn find(&self, hash: u64, id: &RecordId) -> Option<usize> {
        let slots = &self.slots;
        self.ids
            .find(hash, |pos| {
                slots
                    .get(pos.slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.record.id == *id)
            })
            .map(|pos| pos.slot)
    }

    fn get(&self, id: &RecordId) -> Option<&Record> {
        let slot = self.find(self.hasher.hash_one(id), id)?;
        self.slot(slot).map(|s| &s.record)
    }

    /// Claims as [`plan_claim`] decides, looking the id up once.
    fn claim(&mut self, req: &ClaimRequest, now: Timestamp) -> Claimed {
        let hash = self.hasher.hash_one(&req.id);
        let found = self.find(hash, &req.id);
        let existing = found.and_then(|slot| self.slot(slot)).map(|s| &s.record);
        let outcome = plan_claim(existing, req, now);
        match (&outcome, found) {
            (Claimed::Acquired { record, .. } | Claimed::MarkedUnknown(record), Some(slot)) => {
                self.replace(slot, record.clone());
            }
            (Claimed::Acquired { record, .. } | Claimed::MarkedUnknown(record), None) => {
                self.insert(hash, record.clone());
            }
            (Claimed::Existing(_), _) => {}
        }
        outcome
    }

    /// Applies `t` in place, as [`plan_transition`](crate::record::plan_transition)
    /// decides, and lends the record as written (or as found, on a conflict).
    fn transition(&mut self, t: &Transition, now: Timestamp) -> Result<Written<'_>, StoreError> {
        check_legal(t)?;
        let Some(slot) = self.find(self.hasher.hash_one(&t.id), &t.id) else {
            return Ok(Written::Conflict(None));
        };
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return Ok(Written::Conflict(None));
        };
        if !holds(&s.record, t, now) {
            return Ok(Written::Conflict(self.slot(slot).map(|s| &s.record)));
        }
        let old = (s.record.due_at, s.record.expires_at);
        apply_transition(&mut s.record, t, now);
        self.reindex(slot, old);
        Ok(match self.slot(slot) {
            Some(s) => Written::Applied(&s.record),
            None => Written::Conflict(None),
        })
    }

    /// Extends the lease of the record held in `(status, token)`.
    fn renew(&mut self, id: &RecordId, status: Status, token: u64, until: Timestamp) -> bool {
        let Some(slot) = self.find(self.hasher.hash_one(id), id) else {
            return false;
        };
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return false;
        };
        let r = &mut s.record;
        if r.status != status || r.token != token {
            return false;
        }
        let old = (r.due_at, r.expires_at);
        r.lease_until = Some(until);
        r.due_at = Some(until);
        self.reindex(slot, old);
        true
    }

    /// Stores a new record (its id is not in the store).
    fn insert(&mut self, hash: u64, record: Record) {
        let filled = Some(Slot {
            record,
            due_stamp: 0,
            expiry_stamp: 0,
        });
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Some(s) = self.slots.get_mut(slot) {
            *s = filled;
        }
        self.ids
            .insert_unique(hash, Pos { hash, slot }, |pos| pos.hash);
        self.reindex(slot, (None, None));
    }

    /// Writes `record` over the one in `slot` (same id).
    fn replace(&mut self, slot: usize, record: Record) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        let old = std::mem::replace(&mut s.record, record);
        self.reindex(slot, (old.due_at, old.expires_at));
    }

    /// Brings both indexes in step with the record in `slot`, whose due and
    /// expiry times were `old`.
    fn reindex(
        &mut self,
        slot: usize,
        (old_due, old_expires): (Option<Timestamp>, Option<Timestamp>),
    ) {
        let Inner {
            slots,
            due,
            expiry,
            next_stamp,
            ..
        } = self;
        let Some(Some(s)) = slots.get_mut(slot) else {
            return;
        };
        // A slot's stamp is non-zero exactly when its record has that time.
        s.due_stamp = due.update(s.due_stamp, old_due, s.record.due_at, next_stamp, slot);
        s.expiry_stamp = expiry.update(
            s.expiry_stamp,
            old_expires,
            s.record.expires_at,
            next_stamp,
            slot,
        );
        let live = |slot: usize, stamp: u64, which: Which| {
            slots
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.stamp(which) == stamp)
        };
        if due.needs_compaction() {
            due.heap
                .retain(|Reverse((_, stamp, slot))| live(*slot, *stamp, Which::Due));
        }
        if expiry.needs_compaction() {
            expiry
                .heap
                .retain(|Reverse((_, stamp, slot))| live(*slot, *stamp, Which::Expiry));
        }
    }

    fn remove(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let hash = self.hasher.hash_one(&s.record.id);
        if let Ok(pos) = self.ids.find_entry(hash, |pos| pos.slot == slot) {
            pos.remove();
        }
        self.free.push(slot);
        if s.due_stamp != 0 {
            self.due.live -= 1;
        }
        if s.expiry_stamp != 0 {
            self.expiry.live -= 1;
        }
    }

    fn records(&self) -> impl Iterator<Item = &Record> {
        self.slots.iter().flatten().map(|s| &s.record)
    }

    /// Live entries of `index` with a time at or before `now`, earliest first,
    /// at most `limit`, as slots; stale ones met on the way are dropped.
    fn take_due(&mut self, which: Which, now: Timestamp, limit: usize) -> Vec<usize> {
        let Inner {
            slots, due, expiry, ..
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
            let Some(Reverse((at, stamp, slot))) = index.heap.pop() else {
                break;
            };
            let live = slots
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.stamp(which) == stamp);
            if live {
                found.push((at, stamp, slot));
            }
        }
        let out = found.iter().map(|&(_, _, slot)| slot).collect();
        // What was read stays indexed until its record changes.
        index.heap.extend(found.into_iter().map(Reverse));
        out
    }
}

impl Slot {
    fn stamp(&self, which: Which) -> u64 {
        match which {
            Which::Due => self.due_stamp,
            Which::Expiry => self.expiry_stamp,
        }
    }
}

/// A transition's outcome, lending the record instead of copying it.
enum Written<'a> {
    Applied(&'a Record),
    Conflict(Option<&'a Record>),
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
        self.lock().ids.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written record: every
        // write either stores a record computed beforehand or applies a step that
        // does not panic (`apply_transition`, a renewed lease; only allocation
        // can fail there, and that aborts).
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

impl ImmediateStore for MemoryStore {
    fn claim_now(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let now = self.clock.now();
        Ok(self.lock().claim(req, now))
    }

    fn transition_now(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        let now = self.clock.now();
        self.lock().transition(t, now).map(|written| match written {
            Written::Applied(record) => Transitioned::Applied(record.clone()),
            Written::Conflict(current) => Transitioned::Conflict(current.cloned()),
        })
    }

    fn apply_now(&self, t: &Transition) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        Ok(matches!(inner.transition(t, now)?, Written::Applied(_)))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        self.claim_now(req)
    }

    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        self.transition_now(t)
    }

    async fn apply(&self, t: &Transition) -> Result<bool, StoreError> {
        self.apply_now(t)
    }

    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        let until = self.clock.now().plus(lease);
        let renewed = self.lock().renew(id, status, token, until);
        Ok(renewed.then_some(until))
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
            .filter_map(|slot| inner.slot(slot).map(|s| s.record.clone()))
            .collect())
    }

    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let mut found: Vec<&Record> = inner
            .records()
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
        let slots = inner.take_due(Which::Expiry, now, usize::MAX);
        let mut removed = 0;
        for slot in slots {
            if removed == limit {
                break;
            }
            let expired = inner
                .slot(slot)
                .is_some_and(|s| s.record.retention_passed(now));
            if expired {
                inner.remove(slot);
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        Ok(self.clock.now())
    }

    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::{Fingerprint, Key};
    use crate::record::{Kind, OnExpired, Status, Transition};

    fn request(key: &str) -> ClaimRequest {
        ClaimRequest {
            id: RecordId::new("t.op", &Key::new(key).unwrap_or_else(|e| panic!("{e}"))),
            kind: Kind::Idempotent,
            fingerprint: Fingerprint::from_bytes([0; 16]),
            input: b"[]".to_vec().into(),
            lease: Duration::from_secs(30),
            on_expired: OnExpired::TakeOver,
            workflow: None,
            step: None,
        }
    }

    #[tokio::test]
    async fn a_slot_freed_by_expiry_is_reused_without_its_old_index_entries() {
        let clock = crate::clock::ManualClock::new();
        let store = MemoryStore::with_clock(clock.clone());
        let Ok(Claimed::Acquired { record: a, .. }) = store.claim(&request("a")).await else {
            panic!("not acquired");
        };
        let mut t = Transition::new(a.id.clone(), Status::Pending, a.token, Status::Completed);
        t.retention = Some(Duration::from_secs(1));
        assert!(matches!(
            store.transition(&t).await,
            Ok(Transitioned::Applied(_))
        ));
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.expire(10).await.ok(), Some(1));
        assert!(store.is_empty());

        // `b` takes the slot `a` had; `a`'s old entries must not speak for it.
        let Ok(Claimed::Acquired { record: b, .. }) = store.claim(&request("b")).await else {
            panic!("not acquired");
        };
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&a.id).await.ok(), Some(None));
        assert_eq!(store.get(&b.id).await.ok(), Some(Some(b.clone())));
        assert_eq!(store.expire(10).await.ok(), Some(0));
        assert_eq!(store.due(10).await.map(|d| d.len()).ok(), Some(0));
        clock.advance(Duration::from_secs(31));
        let due = store.due(10).await.unwrap_or_default();
        assert_eq!(due, vec![b.clone()]);

        // `a` again: a new record, in a slot of its own.
        let Ok(Claimed::Acquired { previous: None, .. }) = store.claim(&request("a")).await else {
            panic!("not acquired afresh");
        };
        assert_eq!(store.len(), 2);
        let mut listed = store.list(&Query::default()).await.unwrap_or_default();
        listed.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(
            listed.iter().map(|r| r.key()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
    }

    #[tokio::test]
    async fn claims_and_transitions_answer_at_once_also_behind_an_arc() {
        let store = Arc::new(MemoryStore::new());
        let Some(now) = Store::immediate(&store) else {
            panic!("a shared memory store is immediate too");
        };
        let Ok(Claimed::Acquired { record, .. }) = now.claim_now(&request("k")) else {
            panic!("not acquired");
        };
        let t = Transition::new(record.id, Status::Pending, record.token, Status::Completed);
        let Ok(Transitioned::Applied(done)) = now.transition_now(&t) else {
            panic!("not applied");
        };
        assert_eq!(store.get(&done.id).await.ok(), Some(Some(done.clone())));
        // The same step again holds no claim: refused, and nothing is written.
        assert_eq!(
            now.transition_now(&t).ok(),
            Some(Transitioned::Conflict(Some(done.clone())))
        );
        assert_eq!(now.apply_now(&t).ok(), Some(false));
        assert_eq!(store.get(&done.id).await.ok(), Some(Some(done)));

        // `apply_now` writes what `transition_now` would have (but the times,
        // read from the store's clock).
        let Ok(Claimed::Acquired { record, .. }) = now.claim_now(&request("j")) else {
            panic!("not acquired");
        };
        let mut t = Transition::new(record.id, Status::Pending, record.token, Status::Released);
        t.error = Some("boom".into());
        let before = record_of(&store, &t.id).await;
        let planned = crate::record::plan_transition(Some(&before), &t, Timestamp::from_millis(0));
        let Ok(Transitioned::Applied(mut planned)) = planned else {
            panic!("not planned");
        };
        assert_eq!(now.apply_now(&t).ok(), Some(true));
        let written = record_of(&store, &t.id).await;
        planned.updated_at = written.updated_at;
        planned.expires_at = written.expires_at;
        assert_eq!(written, planned);
    }

    async fn record_of(store: &Arc<MemoryStore>, id: &RecordId) -> Record {
        match store.get(id).await {
            Ok(Some(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn stale_index_entries_do_not_pile_up() {
        let store = MemoryStore::new();
        for i in 0..10_000u32 {
            let req = request(&i.to_string());
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
