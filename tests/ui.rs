//! Compile-time rules of the attribute macros: each failing case has a `.stderr`
//! with the message users see; pass cases compile and run.
//!
//! One file per rule, named after it. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test --test ui` and read the diff: each violation
//! should be one error, at the user's tokens, saying what to write instead.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/idempotent/*.rs");
    t.compile_fail("tests/ui/non_idempotent/*.rs");
    t.compile_fail("tests/ui/workflow/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
