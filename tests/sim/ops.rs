//! The simulated service: an order workflow (reserve, charge, ship) in two
//! recovery flavours, a standalone payment without a probe and an idempotent
//! counter, whose effects land in a ledger kept outside tempox. Bodies take
//! (virtual) time between their effects, so a crash can land anywhere.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tempox::{idempotent, non_idempotent, workflow};

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum SimError {
    #[error("shipping refused")]
    Ship,
    #[error("the payment provider is down")]
    ProviderDown,
    #[error("{0}")]
    Tempox(String),
}

impl From<tempox::Error> for SimError {
    fn from(e: tempox::Error) -> Self {
        SimError::Tempox(e.to_string())
    }
}

/// The outside world, and what the harness tells the bodies.
#[derive(Default)]
pub struct World {
    /// Charges made, by order.
    pub charges: BTreeMap<String, u32>,
    /// Of those, the ones made by bodies that did not live through a stall
    /// past their lease: at most one per order.
    pub held_charges: BTreeMap<String, u32>,
    /// The same for standalone payments, by key.
    pub held_payments: BTreeMap<String, u32>,
    /// Orders charged by a body that lived through a stall past its lease:
    /// its claim may have been taken over and its record settled without
    /// its effect (the price of leases), so their rollback is not checked.
    pub zombie_charges: BTreeSet<String>,
    /// Orders whose charge was refunded.
    pub refunded: BTreeSet<String>,
    /// Reservations made, and released.
    pub reserved: BTreeSet<String>,
    pub released: BTreeSet<String>,
    /// Standalone payments made, by key.
    pub payments: BTreeMap<String, u32>,
    /// Counter calls run, by key.
    pub counted: BTreeMap<String, u32>,
    /// Effects in all.
    pub effects: u64,
    /// While set, refunds and releases fail.
    pub compensations_fail: bool,
    /// The process whose task is being polled.
    pub process: usize,
    /// Processes a poisoned body asked to be crashed.
    pub crash_requests: BTreeSet<usize>,
    /// What broke an invariant.
    pub violations: Vec<String>,
    /// Per process, how many times it stalled past its leases. A body that
    /// lived through such a stall may find its claim taken over when it
    /// resumes: a second run of it is the price of leases (its outcome is
    /// fenced, its effect is not), so it is counted apart.
    pub stalls: BTreeMap<usize, u64>,
    /// Effects of bodies that lived through a stall past their lease.
    pub zombie_effects: u64,
    /// Every write of the schedule, as the processes sent them.
    pub log: Vec<String>,
    /// The longest a body waits between its effects.
    pub max_pause: Duration,
    pub rng: Option<fastrand::Rng>,
}

thread_local! {
    pub static WORLD: RefCell<World> = RefCell::new(World::default());
}

pub fn with<T>(f: impl FnOnce(&mut World) -> T) -> T {
    WORLD.with(|w| f(&mut w.borrow_mut()))
}

pub fn violation(v: String) {
    with(|w| w.violations.push(v));
}

/// The writes of an order's records (its workflow's and its steps'), as
/// the processes sent them: what a violation about it quotes.
pub fn writes_of<'w>(w: &'w World, order: &str) -> Vec<&'w String> {
    let marks = [format!("/{order}#"), format!("/{order}:")];
    w.log
        .iter()
        .filter(|l| marks.iter().any(|m| l.contains(m.as_str())))
        .collect()
}

/// The stall count of the process polling the caller.
pub fn epoch() -> (usize, u64) {
    with(|w| (w.process, w.stalls.get(&w.process).copied().unwrap_or(0)))
}

/// Whether a body that started at `epoch` lived through a stall past its
/// lease (and is counted as such if so).
fn zombie(w: &mut World, (process, stalls): (usize, u64)) -> bool {
    let zombie = w.stalls.get(&process).copied().unwrap_or(0) != stalls;
    if zombie {
        w.zombie_effects += 1;
    }
    zombie
}

/// A wait of up to the world's `max_pause` (drawn from the schedule's seed).
async fn pause() {
    let d = with(|w| {
        let max = u64::try_from(w.max_pause.as_millis()).unwrap_or(0);
        let ms = w.rng.as_mut().map_or(0, |r| r.u64(0..=max));
        Duration::from_millis(ms)
    });
    if d.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(d).await;
    }
}

/// A body that kills its process every time it runs (a crash loop): the
/// harness crashes the process that polls it.
async fn poison(key: &str) {
    if key.contains("poison") {
        with(|w| {
            let p = w.process;
            w.crash_requests.insert(p);
        });
        std::future::pending::<()>().await;
    }
}

#[idempotent(name = "sim.release")]
pub async fn release(reservation: &String) -> Result<(), SimError> {
    pause().await;
    if with(|w| w.compensations_fail) {
        return Err(SimError::ProviderDown);
    }
    let order = reservation.trim_start_matches("res-").to_owned();
    with(|w| {
        w.effects += 1;
        w.released.insert(order)
    });
    Ok(())
}

#[idempotent(name = "sim.reserve", compensate = release)]
pub async fn reserve(order: &String) -> Result<String, SimError> {
    pause().await;
    with(|w| {
        w.effects += 1;
        w.reserved.insert(order.clone())
    });
    pause().await;
    Ok(format!("res-{order}"))
}

#[idempotent(name = "sim.refund")]
pub async fn refund(charge: &String) -> Result<(), SimError> {
    pause().await;
    if with(|w| w.compensations_fail) {
        return Err(SimError::ProviderDown);
    }
    let order = charge.trim_start_matches("ch-").to_owned();
    with(|w| {
        w.effects += 1;
        if !w.charges.contains_key(&order) {
            w.violations
                .push(format!("refund of {charge}, which was never charged"));
        }
        w.refunded.insert(order)
    });
    Ok(())
}

/// The provider's lookup: was `order` charged?
pub async fn find_charge(order: &String, _amount: &u64) -> Result<Option<String>, SimError> {
    Ok(with(|w| w.charges.contains_key(order)).then(|| format!("ch-{order}")))
}

#[non_idempotent(name = "sim.charge", compensate = refund, probe = find_charge)]
pub async fn charge(order: &String, amount: u64) -> Result<String, SimError> {
    let _ = amount;
    let started = epoch();
    pause().await;
    with(|w| {
        if crate::world::tracing_on() {
            eprintln!("  effect: charge {order} by process {}", w.process);
        }
        w.effects += 1;
        *w.charges.entry(order.clone()).or_default() += 1;
        if zombie(w, started) {
            w.zombie_charges.insert(order.clone());
            return;
        }
        let n = w.held_charges.entry(order.clone()).or_default();
        *n += 1;
        let n = *n;
        if n > 1 {
            let writes = writes_of(w, order);
            let v = format!(
                "order {order} charged {n} times (by process {}); writes: {writes:#?}",
                w.process
            );
            w.violations.push(v);
        }
    });
    pause().await;
    Ok(format!("ch-{order}"))
}

#[idempotent(name = "sim.ship", compensate = noop)]
pub async fn ship(order: &String) -> Result<(), SimError> {
    pause().await;
    poison(order).await;
    // Some orders cannot be shipped: their workflow rolls back.
    if order.contains("noship") {
        return Err(SimError::Ship);
    }
    Ok(())
}

async fn order_steps(order: &str) -> Result<String, SimError> {
    let order = order.to_owned();
    reserve(&order).await?;
    let charged = charge(&order, 100).await?;
    ship(&order).await?;
    Ok(charged)
}

#[workflow(name = "sim.order", key = order)]
pub async fn order(order: String) -> Result<String, SimError> {
    order_steps(&order).await
}

#[workflow(name = "sim.order_rb", key = order, recover = rollback)]
pub async fn order_rb(order: String) -> Result<String, SimError> {
    order_steps(&order).await
}

/// A payment with no probe: a crash mid-way parks it as outcome unknown.
#[non_idempotent(name = "sim.pay", key = key, compensate = noop)]
pub async fn pay(key: String) -> Result<u32, SimError> {
    let started = epoch();
    pause().await;
    let (n, zombie) = with(|w| {
        w.effects += 1;
        let n = w.payments.entry(key.clone()).or_default();
        *n += 1;
        let n = *n;
        if zombie(w, started) {
            return (n, true);
        }
        let held = w.held_payments.entry(key.clone()).or_default();
        *held += 1;
        (*held, false)
    });
    if n > 1 && !zombie {
        violation(format!("payment {key} made {n} times"));
    }
    pause().await;
    Ok(n)
}

#[idempotent(name = "sim.count", key = key)]
pub async fn count(key: String) -> Result<u32, SimError> {
    pause().await;
    poison(&key).await;
    let n = with(|w| {
        w.effects += 1;
        let n = w.counted.entry(key.clone()).or_default();
        *n += 1;
        *n
    });
    pause().await;
    Ok(n)
}
