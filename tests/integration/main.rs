//! Integration tests: annotated functions against a real runtime and store.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod calls;
mod common;
mod compensation;
mod invariants;
