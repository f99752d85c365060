//! A `pub` operation may take, return and fail with types less visible than
//! itself, as a plain `pub fn` may: nothing the expansion adds makes them part
//! of a public interface.
#![deny(warnings, private_bounds, private_interfaces)]

mod shop {
    use serde::{Deserialize, Serialize};
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    #[derive(Debug, thiserror::Error)]
    enum ShopError {
        #[error(transparent)]
        Tempox(#[from] tempox::Error),
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Order {
        id: String,
        cents: u64,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Charge {
        cents: u64,
    }

    static REFUNDED: AtomicU64 = AtomicU64::new(0);

    #[allow(private_interfaces)]
    #[tempox::idempotent]
    pub async fn refund(charge: &Charge) -> Result<(), ShopError> {
        REFUNDED.fetch_add(charge.cents, SeqCst);
        Ok(())
    }

    #[allow(private_interfaces)]
    #[tempox::idempotent]
    pub async fn void(charge: Charge) -> Result<(), ShopError> {
        let _ = charge;
        Ok(())
    }

    #[allow(private_interfaces)]
    #[tempox::non_idempotent(key = order.id, compensate = refund)]
    pub async fn charge(order: &Order) -> Result<Charge, ShopError> {
        Ok(Charge { cents: order.cents })
    }

    #[allow(private_interfaces)]
    #[tempox::non_idempotent(key = order.id, compensate = void)]
    pub async fn authorize(order: &Order) -> Result<Charge, ShopError> {
        Ok(Charge { cents: order.cents })
    }

    pub async fn run() {
        let rt = tempox::Runtime::builder()
            .store(tempox::store::MemoryStore::new())
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let order = Order {
            id: "o-1".into(),
            cents: 7,
        };
        rt.scope(async {
            assert_eq!(charge(&order).await.ok().map(|c| c.cents), Some(7));
            assert_eq!(authorize(&order).await.ok().map(|c| c.cents), Some(7));
        })
        .await;
        let key = tempox::Key::new("o-1").unwrap_or_else(|e| panic!("{e}"));
        let id = tempox::RecordId::new(&format!("{}::charge", module_path!()), &key);
        rt.compensate(&id).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(REFUNDED.load(SeqCst), 7);
    }
}

#[tokio::main]
async fn main() {
    shop::run().await;
}
