//! Integration tests: annotated functions against a real runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod basics;
