//! Every argument of each attribute at once.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use serde::{Deserialize, Serialize};
use tempox::store::MemoryStore;
use tempox::{Kind, Runtime, idempotent, non_idempotent};

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
enum ShopError {
    #[error("out of stock")]
    OutOfStock,
    #[error(transparent)]
    #[serde(skip)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Charge {
    id: String,
    cents: u64,
}

static RELEASED: AtomicU32 = AtomicU32::new(0);
static RESERVE_RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(name = "shop.release")]
async fn release(stock: &u32) -> Result<(), ShopError> {
    RELEASED.fetch_add(*stock, SeqCst);
    Ok(())
}

#[idempotent(
    key = order.id,
    name = "shop.reserve",
    compensate = release,
    in_flight = reject,
    retention = "7d",
    lease = "30s",
    retry = 3,
    cache_errors,
)]
async fn reserve(order: &Order) -> Result<u32, ShopError> {
    RESERVE_RUNS.fetch_add(1, SeqCst);
    if order.cents == 0 {
        return Err(ShopError::OutOfStock);
    }
    Ok(1)
}

#[idempotent(name = "shop.refund")]
async fn refund(charge: Charge) -> Result<(), ShopError> {
    assert!(charge.cents > 0);
    Ok(())
}

async fn find_charge(order: &Order) -> Result<Option<Charge>, ShopError> {
    let _ = order;
    Ok(None)
}

#[non_idempotent(
    key = order.id,
    name = "shop.charge",
    compensate = refund,
    in_flight = wait,
    probe = find_charge,
    retention = "24h",
    lease = "500ms",
    cache_errors = false,
)]
async fn charge(order: &Order) -> Result<Charge, ShopError> {
    Ok(Charge {
        id: format!("ch_{}", order.id),
        cents: order.cents,
    })
}

#[tokio::main]
async fn main() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let order = Order {
        id: "o-1".into(),
        cents: 300,
    };
    let empty = Order {
        id: "o-2".into(),
        cents: 0,
    };
    rt.scope(async {
        assert_eq!(reserve(&order).await.unwrap(), 1);
        assert_eq!(reserve(&order).await.unwrap(), 1);
        assert_eq!(RESERVE_RUNS.load(SeqCst), 1);
        // `retry = 3`: `OutOfStock` is retryable, so the body runs 4 times; then
        // `cache_errors` replays the error without running it again.
        assert!(matches!(reserve(&empty).await, Err(ShopError::OutOfStock)));
        assert!(matches!(reserve(&empty).await, Err(ShopError::OutOfStock)));
        assert_eq!(RESERVE_RUNS.load(SeqCst), 5);

        let charged = charge(&order).await.unwrap();
        assert_eq!(charge(&order).await.unwrap(), charged);
    })
    .await;

    let reserve = rt.catalog().get("shop.reserve").unwrap();
    assert_eq!(reserve.kind, Kind::Idempotent);
    assert_eq!(format!("{:?}", reserve.compensation), "Call(shop.release)");
    let charge = rt.catalog().get("shop.charge").unwrap();
    assert_eq!(charge.kind, Kind::NonIdempotent);
    assert_eq!(format!("{:?}", charge.compensation), "Call(shop.refund)");
}
