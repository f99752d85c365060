//! Compile-time rules of the attribute macros: each failing case has a `.stderr`
//! with the message users see; pass cases compile and run.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/idempotent/*.rs");
    t.compile_fail("tests/ui/non_idempotent/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
