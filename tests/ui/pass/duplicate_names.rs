//! Two operations given one name: `Runtime::build` refuses, naming both sites.

use tempox::Runtime;
use tempox::store::MemoryStore;

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

mod orders {
    pub const LINE: u32 = line!() + 1;
    #[tempox::idempotent(name = "dup.op")]
    pub async fn reserve(id: u64) -> Result<u64, super::ShopError> {
        Ok(id)
    }
}

mod payments {
    pub const LINE: u32 = line!() + 1;
    #[tempox::non_idempotent(name = "dup.op", compensate = noop)]
    pub async fn charge(cents: u64) -> Result<u64, super::ShopError> {
        Ok(cents)
    }
}

fn main() {
    // Referenced, so that nothing is dead code.
    let _ = (orders::reserve, payments::charge);
    let built = Runtime::builder().store(MemoryStore::new()).build();
    let Err(error) = built else {
        panic!("two operations named `dup.op` were accepted");
    };
    match &error {
        tempox::Error::DuplicateOperation {
            name,
            first,
            second,
            ..
        } => {
            assert_eq!(name, "dup.op");
            let mut lines = [first.line, second.line];
            lines.sort_unstable();
            assert_eq!(lines, [orders::LINE, payments::LINE]);
            assert_eq!((first.file, second.file), (file!(), file!()));
        }
        other => panic!("expected DuplicateOperation, got {other:?}"),
    }
    let message = error.to_string();
    for line in [orders::LINE, payments::LINE] {
        let site = format!("{}:{line}", file!());
        assert!(message.contains(&site), "{message:?} does not name {site}");
    }
    assert!(message.contains("dup.op"), "{message}");
}
