use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use tempox::store::MemoryStore;
use tempox::{Runtime, idempotent, non_idempotent};

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
enum ShopError {
    #[error("declined")]
    Declined,
    #[error(transparent)]
    #[serde(skip)]
    Tempox(#[from] tempox::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

static RESERVED: AtomicU32 = AtomicU32::new(0);
static REFUNDED: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = order.id)]
async fn reserve(order: &Order) -> Result<u64, ShopError> {
    RESERVED.fetch_add(1, Ordering::SeqCst);
    Ok(order.cents * 2)
}

#[idempotent]
async fn refund(charge: &String) -> Result<(), ShopError> {
    let _ = charge;
    REFUNDED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[non_idempotent(compensate = refund)]
async fn charge(order: &Order) -> Result<String, ShopError> {
    if order.cents == 0 {
        return Err(ShopError::Declined);
    }
    Ok(format!("ch_{}", order.id))
}

#[tokio::test]
async fn replays_by_key() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let order = Order {
        id: "o-1".into(),
        cents: 10,
    };
    let (a, b) = rt
        .scope(async {
            (
                reserve(&order).await.unwrap(),
                reserve(&order).await.unwrap(),
            )
        })
        .await;
    assert_eq!((a, b), (20, 20));
    assert_eq!(RESERVED.load(Ordering::SeqCst), 1);
    let c = rt.scope(charge(&order)).await.unwrap();
    assert_eq!(c, "ch_o-1");
    assert!(matches!(
        rt.scope(charge(&Order {
            id: "x".into(),
            cents: 0
        }))
        .await,
        Err(ShopError::Declined)
    ));
}
