//! Operations whose compensations fail, stall or count on request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tempox::{idempotent, non_idempotent, workflow};
use tokio::sync::{Notify, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("undo {0} failed on run {1}")]
    UndoFailed(u32, u32),
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub tag: String,
    pub n: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the compensation of a tag's items behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Fail the first `fail_first` runs of each item's compensation.
    pub fail_first: u32,
    /// Fail items whose `n` is a multiple of this, always.
    pub always_fail_every: Option<u32>,
    /// Hold each run until the gate gives a permit (signalling `started`).
    pub gate: Option<(Arc<Semaphore>, Arc<Notify>)>,
}

static BEHAVIOUR: Mutex<Option<HashMap<String, Behaviour>>> = Mutex::new(None);
static RUNS: Mutex<BTreeMap<(String, u32), u32>> = Mutex::new(BTreeMap::new());
static DONE: Mutex<BTreeMap<(String, u32), u32>> = Mutex::new(BTreeMap::new());

pub fn behave(tag: &str, b: Behaviour) {
    lock(&BEHAVIOUR)
        .get_or_insert_with(HashMap::new)
        .insert(tag.to_owned(), b);
}

/// Runs of the compensation body for an item, and successful ones.
pub fn undo_runs(tag: &str, n: u32) -> (u32, u32) {
    let key = (tag.to_owned(), n);
    (
        lock(&RUNS).get(&key).copied().unwrap_or(0),
        lock(&DONE).get(&key).copied().unwrap_or(0),
    )
}

#[idempotent(name = "rc.undo")]
pub async fn undo(item: &Item) -> Result<(), TestError> {
    let key = (item.tag.clone(), item.n);
    let run = {
        let mut runs = lock(&RUNS);
        let r = runs.entry(key.clone()).or_default();
        *r += 1;
        *r
    };
    let b = lock(&BEHAVIOUR)
        .as_ref()
        .and_then(|m| m.get(&item.tag).cloned())
        .unwrap_or_default();
    if let Some((gate, started)) = &b.gate {
        started.notify_one();
        gate.acquire().await.map(|p| p.forget()).ok();
    }
    if run <= b.fail_first
        || b.always_fail_every
            .is_some_and(|k| item.n.is_multiple_of(k))
    {
        return Err(TestError::UndoFailed(item.n, run));
    }
    *lock(&DONE).entry(key).or_default() += 1;
    Ok(())
}

#[non_idempotent(name = "rc.effect", compensate = undo)]
pub async fn effect(item: Item) -> Result<Item, TestError> {
    Ok(item)
}

// ------------------------------------------------------------ crashed calls

static ARMED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static PARKED: Mutex<Option<HashMap<String, Arc<Notify>>>> = Mutex::new(None);

/// Makes the next body run with `key` stop for good; the returned signal fires
/// when it gets there.
pub fn crash_at(key: &str) -> Arc<Notify> {
    lock(&ARMED).push(key.to_owned());
    lock(&PARKED)
        .get_or_insert_with(HashMap::new)
        .entry(key.to_owned())
        .or_default()
        .clone()
}

async fn crash(key: &str) {
    let armed = {
        let mut a = lock(&ARMED);
        let i = a.iter().position(|k| k == key);
        i.map(|i| a.remove(i)).is_some()
    };
    if armed {
        let signal = lock(&PARKED)
            .get_or_insert_with(HashMap::new)
            .entry(key.to_owned())
            .or_default()
            .clone();
        signal.notify_one();
        std::future::pending::<()>().await;
    }
}

#[idempotent(name = "rc.idem", key = key)]
pub async fn idem(key: String) -> Result<u32, TestError> {
    crash(&key).await;
    Ok(1)
}

#[non_idempotent(name = "rc.unprobed", key = key, compensate = noop)]
pub async fn unprobed(key: String) -> Result<u32, TestError> {
    crash(&key).await;
    Ok(2)
}

/// The outside world's answer: only keys with `-happened` took effect.
pub async fn find(key: &str) -> Result<Option<u32>, TestError> {
    Ok(key.contains("-happened").then_some(30))
}

#[non_idempotent(name = "rc.probed", key = key, compensate = noop, probe = find)]
pub async fn probed(key: String) -> Result<u32, TestError> {
    crash(&key).await;
    Ok(3)
}

#[workflow(name = "rc.flow", key = key)]
pub async fn flow(key: String) -> Result<u32, TestError> {
    let a = idem(format!("{key}/a")).await?;
    crash(&key).await;
    let b = idem(format!("{key}/b")).await?;
    Ok(a + b)
}

/// A body that takes `ticks` sleeps of `tick_ms`, and counts its runs.
#[idempotent(name = "rc.slow", key = key)]
pub async fn slow(key: String, ticks: u32, tick_ms: u64) -> Result<u32, TestError> {
    for _ in 0..ticks {
        tokio::time::sleep(std::time::Duration::from_millis(tick_ms)).await;
    }
    Ok(ticks)
}

/// Runs of `maybe`, by key.
pub static MAYBE_RUNS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// A call whose output may be `None`: a record that lost its output must not
/// replay as one.
#[idempotent(name = "rc.maybe", key = key)]
pub async fn maybe(key: String) -> Result<Option<u32>, TestError> {
    *lock(&MAYBE_RUNS).entry(key.clone()).or_default() += 1;
    crash(&key).await;
    Ok(Some(7))
}
