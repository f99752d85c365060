//! `compensate = <path>`: a function in another module, taken by value or by
//! reference, and `compensate = noop`. Each compensation is run from the record
//! alone, through the catalog.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use serde::{Deserialize, Serialize};
use tempox::store::MemoryStore;
use tempox::{Key, RecordId, Runtime, Status, idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

pub mod payments {
    use super::*;

    pub static REFUNDED: AtomicU64 = AtomicU64::new(0);

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Charge {
        pub id: String,
        pub cents: u64,
    }

    /// Takes the output by value.
    #[idempotent]
    pub async fn refund(charge: Charge) -> Result<(), ShopError> {
        REFUNDED.fetch_add(charge.cents, SeqCst);
        Ok(())
    }

    pub mod voids {
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

        pub static VOIDED: AtomicU64 = AtomicU64::new(0);

        /// Takes the output by reference, from a nested module.
        #[tempox::idempotent]
        pub async fn void(charge: &super::Charge) -> Result<(), super::ShopError> {
            VOIDED.fetch_add(charge.cents, SeqCst);
            Ok(())
        }
    }
}

#[non_idempotent(key = order_id, compensate = payments::refund)]
async fn charge(order_id: String, cents: u64) -> Result<payments::Charge, ShopError> {
    Ok(payments::Charge {
        id: format!("ch_{order_id}"),
        cents,
    })
}

#[non_idempotent(key = order_id, compensate = self::payments::voids::void)]
async fn authorize(order_id: &str, cents: u64) -> Result<payments::Charge, ShopError> {
    Ok(payments::Charge {
        id: format!("auth_{order_id}"),
        cents,
    })
}

static RELEASED: AtomicU64 = AtomicU64::new(0);

/// `&str` undoes an operation whose output is a `String`.
#[idempotent]
async fn release(hold_id: &str) -> Result<(), ShopError> {
    assert!(hold_id.starts_with("hold_"));
    RELEASED.fetch_add(1, SeqCst);
    Ok(())
}

#[non_idempotent(key = order_id, compensate = release)]
async fn hold(order_id: u64) -> Result<String, ShopError> {
    Ok(format!("hold_{order_id}"))
}

/// Nothing can undo an email.
#[non_idempotent(key = to, compensate = noop)]
async fn send_receipt(to: &str) -> Result<(), ShopError> {
    assert!(to.contains('@'));
    Ok(())
}

fn record(op: &str, key: &str) -> RecordId {
    RecordId::new(
        &format!("{}::{op}", module_path!()),
        &Key::new(key).unwrap(),
    )
}

#[tokio::main]
async fn main() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    rt.scope(async {
        charge("o-1".to_owned(), 250).await.unwrap();
        authorize("o-2", 400).await.unwrap();
        hold(3).await.unwrap();
        send_receipt("ada@example.com").await.unwrap();
    })
    .await;

    let compensated = rt.compensate(&record("charge", "o-1")).await.unwrap();
    assert_eq!(compensated.status, Status::Compensated);
    assert_eq!(payments::REFUNDED.load(SeqCst), 250);

    let compensated = rt.compensate(&record("authorize", "o-2")).await.unwrap();
    assert_eq!(compensated.status, Status::Compensated);
    assert_eq!(payments::voids::VOIDED.load(SeqCst), 400);

    let compensated = rt.compensate(&record("hold", "3")).await.unwrap();
    assert_eq!(compensated.status, Status::Compensated);
    assert_eq!(RELEASED.load(SeqCst), 1);

    let compensated = rt
        .compensate(&record("send_receipt", "ada@example.com"))
        .await
        .unwrap();
    assert_eq!(compensated.status, Status::Compensated);

    // The catalog names each compensation by its operation name.
    let entry = rt
        .catalog()
        .get(&format!("{}::charge", module_path!()))
        .unwrap();
    assert_eq!(
        format!("{:?}", entry.compensation),
        format!("Call({}::payments::refund)", module_path!())
    );
    let entry = rt
        .catalog()
        .get(&format!("{}::send_receipt", module_path!()))
        .unwrap();
    assert_eq!(format!("{:?}", entry.compensation), "Noop");
}
