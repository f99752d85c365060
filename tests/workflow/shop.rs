//! The shop under test: steps that record their effects in a ledger (the
//! "outside world"), crash points, and the backends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tempox::{idempotent, non_idempotent, workflow};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("shipping failed for {0}")]
    ShippingFailed(String),
    #[error("refund api down")]
    RefundDown,
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

impl ShopError {
    pub fn tempox(&self) -> Option<&tempox::Error> {
        match self {
            ShopError::Tempox(e) => Some(e),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub cents: u64,
    pub fail_ship: bool,
}

// ---------------------------------------------------------------- the world

static LEDGER: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records `event` for `order` (every time: counts show double effects).
fn effect(order: &str, event: &str) {
    lock(&LEDGER).push((order.to_owned(), event.to_owned()));
}

/// Every event of `order`, in order.
pub fn events(order: &str) -> Vec<String> {
    lock(&LEDGER)
        .iter()
        .filter(|(o, _)| o == order)
        .map(|(_, e)| e.clone())
        .collect()
}

pub fn count(order: &str, event: &str) -> usize {
    events(order).iter().filter(|e| *e == event).count()
}

/// Events of `order` as a set: what idempotent effects left in the world.
pub fn happened(order: &str) -> HashSet<String> {
    events(order).into_iter().collect()
}

// ---------------------------------------------------------------- crashes

static CRASH_AT: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static PARKED: Mutex<Option<HashMap<String, Arc<Notify>>>> = Mutex::new(None);

fn parked_signal(order: &str) -> Arc<Notify> {
    lock(&PARKED)
        .get_or_insert_with(HashMap::new)
        .entry(order.to_owned())
        .or_default()
        .clone()
}

/// Makes the next run of `order` stop for good at `point`; returns the signal
/// that fires when it gets there.
pub fn crash_at(order: &str, point: &str) -> Arc<Notify> {
    lock(&CRASH_AT).push((order.to_owned(), point.to_owned()));
    parked_signal(order)
}

/// A crash point: if armed for `order`, disarm it, say so, and never return
/// (the test then aborts the task: the process "dies" here).
async fn crash(order: &str, point: &str) {
    let armed = {
        let mut at = lock(&CRASH_AT);
        let found = at.iter().position(|(o, p)| o == order && p == point);
        found.map(|i| at.remove(i)).is_some()
    };
    if armed {
        parked_signal(order).notify_one();
        std::future::pending::<()>().await;
    }
}

static FAILING_REFUNDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SLOW_REFUNDS: Mutex<Option<HashMap<String, Arc<tokio::sync::Semaphore>>>> = Mutex::new(None);

pub fn fail_refunds(order: &str, fail: bool) {
    let mut f = lock(&FAILING_REFUNDS);
    f.retain(|o| o != order);
    if fail {
        f.push(order.to_owned());
    }
}

/// Makes refunds of `order` wait until the returned gate gets a permit.
pub fn slow_refunds(order: &str) -> Arc<tokio::sync::Semaphore> {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    lock(&SLOW_REFUNDS)
        .get_or_insert_with(HashMap::new)
        .insert(order.to_owned(), gate.clone());
    gate
}

// ---------------------------------------------------------------- steps

#[idempotent(name = "shop.release")]
pub async fn release(reservation: &String) -> Result<(), ShopError> {
    effect(reservation.trim_start_matches("res-"), "release");
    Ok(())
}

#[idempotent(name = "shop.reserve", compensate = release)]
pub async fn reserve(order: &String) -> Result<String, ShopError> {
    effect(order, "reserve");
    crash(order, "inside:1").await;
    Ok(format!("res-{order}"))
}

#[idempotent(name = "shop.refund")]
pub async fn refund(charge: &String) -> Result<(), ShopError> {
    let order = charge.trim_start_matches("ch-").to_owned();
    let gate = lock(&SLOW_REFUNDS)
        .as_ref()
        .and_then(|m| m.get(&order).cloned());
    if let Some(gate) = gate {
        effect(&order, "refund-started");
        gate.acquire().await.map(|p| p.forget()).ok();
    }
    if lock(&FAILING_REFUNDS).contains(&order) {
        effect(&order, "refund-failed");
        return Err(ShopError::RefundDown);
    }
    effect(&order, "refund");
    Ok(())
}

/// The payment provider's lookup: was `order` charged?
pub async fn find_charge(order: &String, _cents: &u64) -> Result<Option<String>, ShopError> {
    Ok((count(order, "charge") > 0).then(|| format!("ch-{order}")))
}

#[non_idempotent(name = "shop.charge", compensate = refund, probe = find_charge)]
pub async fn charge(order: &String, cents: u64) -> Result<String, ShopError> {
    let _ = cents;
    effect(order, "charge");
    crash(order, "inside:2").await;
    Ok(format!("ch-{order}"))
}

#[idempotent(name = "shop.ship", compensate = noop)]
pub async fn ship(order: &String, fail: bool) -> Result<(), ShopError> {
    if fail {
        return Err(ShopError::ShippingFailed(order.clone()));
    }
    effect(order, "ship");
    crash(order, "inside:3").await;
    Ok(())
}

/// The checkout's steps, shared by the workflow variants below (steps are
/// found at run time, so a helper function works).
async fn checkout_steps(order: &Order) -> Result<String, ShopError> {
    crash(&order.id, "before:1").await;
    reserve(&order.id).await?;
    crash(&order.id, "after:1").await;
    let charged = charge(&order.id, order.cents).await?;
    crash(&order.id, "after:2").await;
    ship(&order.id, order.fail_ship).await?;
    crash(&order.id, "after:3").await;
    Ok(charged)
}

#[workflow(key = order.id, name = "shop.checkout")]
pub async fn checkout(order: Order) -> Result<String, ShopError> {
    checkout_steps(&order).await
}

#[workflow(key = order.id, name = "shop.checkout_rollback", recover = rollback)]
pub async fn checkout_rollback(order: Order) -> Result<String, ShopError> {
    checkout_steps(&order).await
}

#[workflow(key = order.id, name = "shop.checkout_continue", rollback = continue)]
pub async fn checkout_continue(order: Order) -> Result<String, ShopError> {
    checkout_steps(&order).await
}

/// Steps depend on outside state: a workflow that is not deterministic.
pub static SHIP_FIRST: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[workflow(key = id, name = "shop.wobbly")]
pub async fn wobbly(id: String) -> Result<(), ShopError> {
    if lock(&SHIP_FIRST).contains(&id) {
        ship(&id, false).await?;
    } else {
        reserve(&id).await?;
    }
    crash(&id, "after:1").await;
    Ok(())
}

pub fn ship_first(id: &str) {
    lock(&SHIP_FIRST).push(id.to_owned());
}

#[workflow(key = order.id, name = "shop.inner")]
pub async fn inner(order: Order) -> Result<String, ShopError> {
    reserve(&order.id).await?;
    charge(&order.id, order.cents).await
}

#[workflow(key = order.id, name = "shop.outer")]
pub async fn outer(order: Order) -> Result<String, ShopError> {
    let charged = inner(order.clone()).await?;
    ship(&order.id, order.fail_ship).await?;
    Ok(charged)
}

#[cfg(feature = "redis")]
pub use crate::support::backend::redis;
pub use crate::support::backend::{Backend, memory, sqlite};

/// An order no other test (or backend) uses.
pub fn order(b: &Backend, scenario: &str, cents: u64, fail_ship: bool) -> Order {
    Order {
        id: b.key(scenario),
        cents,
        fail_ship,
    }
}

#[idempotent(name = "shop.stock")]
pub async fn stock(order: &String) -> Result<(), ShopError> {
    // Waits for ever when armed: a supplier that never answers.
    crash(order, "stock").await;
    Ok(())
}

/// A checkout that must be done within a second of its start.
#[workflow(key = order.id, name = "shop.checkout_deadline", deadline = "1s")]
pub async fn checkout_deadline(order: Order) -> Result<String, ShopError> {
    reserve(&order.id).await?;
    let charged = charge(&order.id, order.cents).await?;
    stock(&order.id).await?;
    ship(&order.id, order.fail_ship).await?;
    Ok(charged)
}
