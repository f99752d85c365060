//! A shop's checkout as a tempox workflow: reserve stock (idempotent, undone by
//! a release), charge the card (non-idempotent, undone by a refund), send a
//! confirmation (nothing to undo).
//!
//! Requests arrive twice, cards get declined, the mail server fails, and a
//! process dies mid-checkout: the output shows what ran, what was replayed from
//! a record, what was compensated, and how another runtime finished the job.
//! Records live in a SQLite file; `-- --again` keeps the file of the last run
//! and sends the same requests: the completed orders replay from their
//! records, and the keys of rolled-back orders are refused.
//!
//! ```text
//! cargo run --example checkout
//! cargo run --example checkout -- --again
//! ```

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tempox::store::{Query, SqliteStore};
use tempox::{Key, RecordId, Runtime, idempotent, non_idempotent, workflow};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    sku: String,
    cents: u64,
    card: String,
}

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error("card {0} was declined")]
    Declined(String),
    #[error("the mail server is down")]
    MailDown,
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

/// The outside world the shop talks to.
static MAIL_DOWN: AtomicBool = AtomicBool::new(false);
/// Set for the run that dies after the charge: told when it got there.
static DIE_AFTER_CHARGE: Mutex<Option<oneshot::Sender<()>>> = Mutex::new(None);

fn effect(what: &str) {
    println!("    ran      {what}");
}

/// Undoes a reservation; may run more than once, so it is idempotent. Keyed
/// by the reservation it undoes: its record is `shop.release/<reservation>`.
#[idempotent(name = "shop.release", key = reservation)]
async fn release(reservation: &String) -> Result<(), ShopError> {
    effect(&format!("release {reservation}"));
    Ok(())
}

#[idempotent(name = "shop.reserve", compensate = release)]
async fn reserve_inventory(order_id: &str, sku: &str) -> Result<String, ShopError> {
    effect(&format!("reserve {sku} for {order_id}"));
    Ok(format!("res-{order_id}"))
}

/// Undoes a charge, keyed by the charge it undoes.
#[idempotent(name = "shop.refund", key = charge)]
async fn refund(charge: &String) -> Result<(), ShopError> {
    effect(&format!("refund {charge}"));
    Ok(())
}

/// Charging is not idempotent: never run again automatically, undone by `refund`.
#[non_idempotent(name = "shop.charge", compensate = refund)]
async fn charge(order: &Order) -> Result<String, ShopError> {
    if order.card.starts_with("0000") {
        return Err(ShopError::Declined(order.card.clone()));
    }
    effect(&format!("charge {} cents for {}", order.cents, order.id));
    Ok(format!("ch_{}", order.id))
}

/// An email cannot be unsent: `compensate = noop` says so.
#[non_idempotent(name = "shop.confirm", compensate = noop)]
async fn send_confirmation(order: &Order) -> Result<(), ShopError> {
    if MAIL_DOWN.load(Ordering::SeqCst) {
        return Err(ShopError::MailDown);
    }
    effect(&format!("email confirmation of {}", order.id));
    Ok(())
}

/// Each call inside is a checkpointed step. If a step fails, the completed ones
/// are undone newest first; if the process dies, another one resumes it.
#[workflow(key = order.id, name = "shop.checkout")]
async fn checkout(order: Order) -> Result<String, ShopError> {
    reserve_inventory(&order.id, &order.sku).await?;
    let charge_id = charge(&order).await?;
    if let Some(died) = DIE_AFTER_CHARGE.lock().ok().and_then(|mut d| d.take()) {
        println!("    crash    the process dies after the charge");
        let _ = died.send(());
        std::future::pending::<()>().await;
    }
    send_confirmation(&order).await?;
    Ok(charge_id)
}

async fn request(rt: &Runtime, title: &str, order: &Order) {
    println!("{title}");
    let before = rt.counters();
    let result = rt.scope(checkout(order.clone())).await;
    let after = rt.counters();
    match result {
        Ok(charge) if after.executions == before.executions => {
            println!("    replayed {charge}: nothing ran")
        }
        Ok(charge) => println!("    ok       {charge}"),
        Err(e) => println!("    failed   {e}"),
    }
    let compensated = after.compensations - before.compensations;
    if compensated > 0 {
        println!("    undone   {compensated} step(s) compensated, newest first");
    }
}

fn order(id: &str, sku: &str, cents: u64, card: &str) -> Order {
    Order {
        id: id.into(),
        sku: sku.into(),
        cents,
        card: card.into(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let again = std::env::args().any(|a| a == "--again");
    // `--again` keeps the records of the last run.
    let path = support::database("tempox-checkout.db", !again)?;
    // A short lease, so the crash below is recovered within a second.
    let lease = Duration::from_millis(500);
    let runtime = || {
        Ok::<_, Box<dyn std::error::Error>>(
            Runtime::builder()
                .store(SqliteStore::open(&path)?)
                .lease(lease)
                .build()?,
        )
    };
    let rt = runtime()?;
    let kept = if again {
        " (kept from the last run)"
    } else {
        ""
    };
    println!("records: {}{kept}\n", path.display());

    let o1 = order("order-1", "kettle", 4_999, "4242");
    request(&rt, "1. order-1 checks out", &o1).await;
    request(
        &rt,
        "2. order-1 again (the client timed out and retried)",
        &o1,
    )
    .await;
    let mut tampered = o1.clone();
    tampered.cents = 1;
    request(&rt, "3. order-1 again with another amount", &tampered).await;

    let o2 = order("order-2", "teapot", 2_500, "0000-declined");
    request(&rt, "4. order-2 with a declined card", &o2).await;

    MAIL_DOWN.store(true, Ordering::SeqCst);
    let o3 = order("order-3", "mug", 1_200, "4242");
    request(&rt, "5. order-3 while the mail server is down", &o3).await;
    MAIL_DOWN.store(false, Ordering::SeqCst);

    let o4 = order("order-4", "spoon", 300, "4242");
    if again {
        request(&rt, "6. order-4 again", &o4).await;
    } else {
        println!("6. order-4: the process running it dies after the charge");
        let id4 = RecordId::new("shop.checkout", &Key::new(o4.id.clone())?);
        let (died, dead) = oneshot::channel();
        if let Ok(mut die) = DIE_AFTER_CHARGE.lock() {
            *die = Some(died);
        }
        let dying = rt.clone();
        let mut task = tokio::spawn(async move { dying.scope(checkout(o4)).await });
        // "Kill the process" once the charge is recorded.
        let reached = async {
            tokio::select! {
                died = dead => died.map_err(|e| e.to_string()),
                ended = &mut task => Err(format!("order-4 ended before the crash: {ended:?}")),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reached)
            .await
            .map_err(|_| "order-4 did not reach the charge within 30 s")??;
        task.abort();
        // Nobody renews its lease now; once it lapses, another runtime may
        // take the workflow over.
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        let other = runtime()?;
        match tokio::time::timeout(Duration::from_secs(30), other.recover_workflow(&id4)).await {
            Ok(Ok(done)) => println!(
                "    recovered by a fresh runtime: workflow is {}",
                done.status
            ),
            Ok(Err(e)) => println!("    failed   recovery: {e}"),
            Err(_) => return Err("recovering order-4 took more than 30 s".into()),
        }
    }

    println!("\nrecords:");
    let all = rt
        .store()
        .list(&Query {
            limit: 1000,
            ..Default::default()
        })
        .await?;
    for r in &all {
        let step = r.step.map(|s| format!("step {s}")).unwrap_or_default();
        println!(
            "    {:<44} {:<7} {:<21} attempts {}",
            r.id.as_str(),
            step,
            r.status.as_str(),
            r.attempts
        );
    }
    let c = rt.counters();
    println!(
        "\ncalls {}  bodies run {}  replayed {}  key reuse refused {}  compensations {}",
        c.calls, c.executions, c.replays, c.key_reuses, c.compensations
    );
    println!(
        "read them: cargo run -q --features cli --bin tempox -- --store {} show shop.checkout/order-4",
        path.display()
    );
    if !again {
        println!(
            "run `cargo run --example checkout -- --again` to replay the same requests from the file"
        );
    }
    Ok(())
}
