//! A call with no runtime in scope is an `Err` (`tempox::Error::NoRuntime`)
//! through the function's own error type; it never panics, even with no async
//! runtime at all.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tempox::{idempotent, non_idempotent};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = id)]
async fn reserve(id: u64) -> Result<u64, ShopError> {
    panic!("the body of `reserve({id})` ran with no runtime");
}

#[non_idempotent(compensate = noop)]
async fn charge(cents: u64) -> Result<u64, ShopError> {
    panic!("the body of `charge({cents})` ran with no runtime");
}

fn no_runtime(result: Result<u64, ShopError>, op: &str) {
    match result {
        Err(ShopError::Tempox(tempox::Error::NoRuntime { op: named, .. })) => {
            assert!(named.ends_with(op), "{named}");
        }
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

/// Polls a future that must be ready at once, on no executor.
fn ready_now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a call with no runtime must be answered at once"),
    }
}

fn main() {
    no_runtime(ready_now(reserve(1)), "::reserve");
    no_runtime(ready_now(charge(1)), "::charge");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    no_runtime(tokio.block_on(reserve(2)), "::reserve");
}
