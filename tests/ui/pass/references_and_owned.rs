//! Arguments by reference and by value; keys from a field and from a call.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use serde::{Deserialize, Serialize};
use tempox::store::MemoryStore;
use tempox::{Runtime, idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Reservation {
    order: String,
    sku: String,
    warehouse: String,
    quantity: u64,
}

static RESERVED: AtomicU32 = AtomicU32::new(0);
static SHIPPED: AtomicU32 = AtomicU32::new(0);

/// Every kind of argument at once; the key is a field of a borrowed argument.
#[idempotent(key = order.id)]
async fn reserve(
    order: &Order,
    sku: String,
    warehouse: &str,
    quantity: u64,
) -> Result<Reservation, ShopError> {
    RESERVED.fetch_add(1, SeqCst);
    Ok(Reservation {
        order: order.id.clone(),
        sku,
        warehouse: warehouse.to_owned(),
        quantity,
    })
}

fn shipment_key(order: &Order, carrier: &str) -> String {
    format!("{}:{carrier}", order.id)
}

/// The key is a function call over two arguments; `order` is owned.
#[idempotent(key = shipment_key(&order, carrier))]
async fn ship(order: Order, carrier: &str) -> Result<u64, ShopError> {
    SHIPPED.fetch_add(1, SeqCst);
    Ok(order.cents)
}

/// No key: the key is a hash of every argument.
#[idempotent]
async fn quote(order: &Order, mut discount: u64) -> Result<u64, ShopError> {
    discount = discount.min(order.cents);
    Ok(order.cents - discount)
}

#[tokio::main]
async fn main() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let order = Order {
        id: "o-1".into(),
        cents: 900,
    };
    rt.scope(async {
        let first = reserve(&order, "sku-1".into(), "north", 2).await.unwrap();
        let again = reserve(&order, "sku-1".into(), "north", 2).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(RESERVED.load(SeqCst), 1, "the second call replays");

        assert_eq!(ship(order.clone(), "ups").await.unwrap(), 900);
        assert_eq!(ship(order.clone(), "ups").await.unwrap(), 900);
        assert_eq!(ship(order.clone(), "dhl").await.unwrap(), 900);
        assert_eq!(SHIPPED.load(SeqCst), 2, "one run per key");

        assert_eq!(quote(&order, 100).await.unwrap(), 800);
        assert_eq!(quote(&order, 5000).await.unwrap(), 0);
    })
    .await;
}
