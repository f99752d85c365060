//! A shop's checkout with tempox: reserve stock (idempotent by order id), charge
//! the card (non-idempotent, undone by a refund), send a confirmation (at most
//! once per order, nothing to undo).
//!
//! Requests arrive twice, cards get declined, the mail server fails: the output
//! shows what ran, what was replayed from a record and what was compensated.
//! Records live in a SQLite file; `-- --again` keeps the file from the last run,
//! so every request replays from it.
//!
//! ```text
//! cargo run --example checkout
//! cargo run --example checkout -- --again
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tempox::store::SqliteStore;
use tempox::{Key, RecordId, Runtime, idempotent, non_idempotent};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    sku: String,
    cents: u64,
    card: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    order: String,
    sku: String,
}

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error("card {0} was declined")]
    Declined(String),
    #[error("the mail server is down")]
    MailDown,
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
    #[error(transparent)]
    Key(#[from] tempox::KeyError),
}

/// The outside world the shop talks to.
static MAIL_DOWN: AtomicBool = AtomicBool::new(false);

fn effect(what: &str) {
    println!("    ran      {what}");
}

/// Keyed by order; its fingerprint covers only what it is given (order and sku).
#[idempotent(key = order_id, name = "shop.reserve")]
async fn reserve_inventory(order_id: &str, sku: &str) -> Result<Reservation, ShopError> {
    effect(&format!("reserve {sku} for {order_id}"));
    Ok(Reservation {
        order: order_id.to_owned(),
        sku: sku.to_owned(),
    })
}

/// A refund may run more than once (after a crash, from several processes):
/// it is idempotent, keyed by the charge it undoes.
#[idempotent(name = "shop.refund")]
async fn refund(charge: &String) -> Result<(), ShopError> {
    effect(&format!("refund {charge}"));
    Ok(())
}

/// Charging is not idempotent; keyed by order, it happens at most once per order.
#[non_idempotent(key = order.id, name = "shop.charge", compensate = refund)]
async fn charge(order: &Order) -> Result<String, ShopError> {
    if order.card.starts_with("0000") {
        return Err(ShopError::Declined(order.card.clone()));
    }
    effect(&format!("charge {} cents for {}", order.cents, order.id));
    Ok(format!("ch_{}", order.id))
}

/// An email cannot be unsent: `compensate = noop` says so.
#[non_idempotent(key = order.id, name = "shop.confirm", compensate = noop)]
async fn send_confirmation(order: &Order) -> Result<(), ShopError> {
    if MAIL_DOWN.load(Ordering::SeqCst) {
        return Err(ShopError::MailDown);
    }
    effect(&format!("email confirmation of {}", order.id));
    Ok(())
}

/// The checkout: when a step after the charge fails, the charge is undone by its
/// compensation, found through tempox's catalog from the charge's record.
async fn checkout(rt: &Runtime, order: &Order) -> Result<String, ShopError> {
    reserve_inventory(&order.id, &order.sku).await?;
    let charge_id = charge(order).await?;
    if let Err(e) = send_confirmation(order).await {
        let record = RecordId::new("shop.charge", &Key::new(order.id.clone())?);
        rt.compensate(&record).await?;
        return Err(e);
    }
    Ok(charge_id)
}

async fn request(rt: &Runtime, title: &str, order: &Order) {
    println!("{title}");
    let before = rt.counters();
    let result = rt.scope(checkout(rt, order)).await;
    let after = rt.counters();
    let replays = after.replays - before.replays;
    match result {
        Ok(charge) => println!("    ok       {charge} ({replays} step(s) replayed from records)"),
        Err(e) => println!("    failed   {e}"),
    }
    let compensated = after.compensations - before.compensations;
    if compensated > 0 {
        println!("    undone   {compensated} compensation(s) ran");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("tempox-checkout.db");
    let again = std::env::args().any(|a| a == "--again");
    if !again {
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(format!("cannot remove {file}: {e}").into());
            }
        }
    }
    let rt = Runtime::builder().store(SqliteStore::open(&path)?).build()?;
    println!("records: {}{}\n", path.display(), if again { " (kept from the last run)" } else { "" });

    let o1 = Order {
        id: "order-1".into(),
        sku: "kettle".into(),
        cents: 4_999,
        card: "4242".into(),
    };
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

    let mut o2 = Order {
        id: "order-2".into(),
        sku: "teapot".into(),
        cents: 2_500,
        card: "0000-declined".into(),
    };
    request(&rt, "4. order-2 with a declined card", &o2).await;
    o2.card = "5555".into();
    request(
        &rt,
        "5. order-2 with another card (a failed charge left no effect)",
        &o2,
    )
    .await;

    let o3 = Order {
        id: "order-3".into(),
        sku: "mug".into(),
        cents: 1_200,
        card: "4242".into(),
    };
    MAIL_DOWN.store(true, Ordering::SeqCst);
    request(&rt, "6. order-3 while the mail server is down", &o3).await;
    MAIL_DOWN.store(false, Ordering::SeqCst);

    println!("\nrecords:");
    let all = rt
        .store()
        .list(&tempox::store::Query {
            limit: 1000,
            ..Default::default()
        })
        .await?;
    for r in &all {
        println!(
            "    {:<46} {:<12} attempts {}",
            r.id.as_str(),
            r.status.as_str(),
            r.attempts
        );
    }
    let c = rt.counters();
    println!(
        "\ncalls {}  bodies run {}  replayed {}  key reuse refused {}  compensations {}",
        c.calls, c.executions, c.replays, c.key_reuses, c.compensations
    );
    if !again {
        println!("run `cargo run --example checkout -- --again` to replay the same requests from the file");
    }
    Ok(())
}
